"""Hinton knowledge distillation (KD): CE plus the T^2-scaled KL to the teacher at T."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import prepare
from .targets import Targets
from .teacher import teacher_log_probs
from .validation import check_weight

__all__ = ["kd_loss"]


def kd_loss(
    student_logits: torch.Tensor,
    targets: Targets,
    labels: torch.Tensor,
    temperature: float = 4.0,
    ce_weight: float = 0.1,
) -> torch.Tensor:
    """KD (Hinton et al. 2015): ``w * CE + (1 - w) * T^2 * KL(p_t^T || p_s^T)``, w = ce_weight.

    The KL is summed over classes and averaged over the batch. From compact targets the
    teacher distribution spreads the unranked mass evenly (see `teacher_log_probs`).

    Args:
        student_logits: [B, C] float.
        targets: dense teacher logits [B, C] or `CachedTargets` (cached at T and 1).
        labels: [B] integer class indices.
        temperature: T > 0 for both softmaxes.
        ce_weight: w in [0, 1], the weight of the CE term; the KL term gets 1 - w.

    Returns:
        Scalar tensor (float32; float64 for float64 logits).

    Raises:
        LossInputError, TemperatureNotCachedError: bad inputs, or T not cached.
    """
    ce_weight = check_weight("ce_weight", ce_weight, upper=1.0)
    logits, labels, temperature = prepare(student_logits, targets, labels, temperature)
    log_q = F.log_softmax(logits / temperature, dim=1)
    log_p = teacher_log_probs(targets, labels, logits.shape[1], temperature, logits.dtype)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    loss = (1.0 - ce_weight) * temperature**2 * kl
    if ce_weight > 0:
        loss = loss + ce_weight * F.cross_entropy(logits, labels)
    return loss
