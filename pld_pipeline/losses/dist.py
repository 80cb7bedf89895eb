"""DIST (Huang et al. 2022): Pearson relations between student and teacher probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import prepare
from .targets import Targets
from .teacher import teacher_log_probs
from .validation import check_weight

__all__ = ["dist_loss"]

# Added to the product of norms, as in the authors' code, so a constant row gives 0.
_EPS = 1e-8


def _mean_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the Pearson correlation of a[i] and b[i]; a, b [N, D]."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return ((a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + _EPS)).mean()


def dist_loss(
    student_logits: torch.Tensor,
    targets: Targets,
    labels: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.45,
    gamma: float = 0.45,
    ce_weight: float = 0.1,
) -> torch.Tensor:
    """DIST: ``T^2 * (beta * inter + gamma * intra) + ce_weight * CE``.

    With p = softmax(z / T) for student and teacher, inter = 1 - mean over examples of
    Pearson(p_s[i], p_t[i]) and intra = the same over classes (columns of the batch), so
    the loss depends on the whole batch. The Pearson denominators get +1e-8 as in the
    authors' code. From compact targets the unranked mass is spread evenly.

    Args:
        student_logits: [B, C] float.
        targets: dense teacher logits [B, C] or `CachedTargets` (cached at T and 1).
        labels: [B] integer class indices.
        temperature: T > 0.
        beta: weight of the inter-class relation, >= 0.
        gamma: weight of the intra-class relation, >= 0.
        ce_weight: weight of the CE term, >= 0.

    Returns:
        Scalar tensor (float32; float64 for float64 logits).

    Raises:
        LossInputError, TemperatureNotCachedError: bad inputs, or T not cached.
    """
    beta = check_weight("beta", beta)
    gamma = check_weight("gamma", gamma)
    ce_weight = check_weight("ce_weight", ce_weight)
    logits, labels, temperature = prepare(student_logits, targets, labels, temperature)
    p_s = F.softmax(logits / temperature, dim=1)
    p_t = teacher_log_probs(targets, labels, logits.shape[1], temperature, logits.dtype).exp()
    inter = 1.0 - _mean_pearson(p_s, p_t)
    intra = 1.0 - _mean_pearson(p_s.t(), p_t.t())
    loss = temperature**2 * (beta * inter + gamma * intra)
    if ce_weight > 0:
        loss = loss + ce_weight * F.cross_entropy(logits, labels)
    return loss
