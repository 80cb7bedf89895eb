"""Decoupled KD (DKD, Zhao et al. 2022): target-class and non-target-class KL terms."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import prepare
from .targets import Targets
from .teacher import teacher_log_probs
from .validation import check_weight

__all__ = ["dkd_loss"]


def dkd_loss(
    student_logits: torch.Tensor,
    targets: Targets,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    ce_weight: float = 1.0,
) -> torch.Tensor:
    """DKD: ``ce_weight * CE + T^2 * (alpha * TCKD + beta * NCKD)``.

    Defaults are Zhao et al.'s ImageNet setting (T=1, alpha=beta=0.5); their CIFAR one
    (T=4, alpha=1, beta=8) needs a 20-epoch warm-up of the DKD term, without which small
    students diverge (seen in the Fashion-MNIST demo).

    TCKD is the KL between the teacher's and student's binary distributions
    [p(y), 1 - p(y)] at T; NCKD is the KL between their distributions over the non-target
    classes (the true class removed before the softmax at T). The authors' code removes it
    by subtracting 1000 from its logit; here it is removed exactly, and 1 - p(y) is taken
    as a sum over the other classes (in the log domain for the student) so it stays exact
    when p(y) is near 1. The epoch warm-up of the DKD term is the trainer's business.
    From compact targets the unranked mass is spread evenly (p_t(y) stays exact).

    Args:
        student_logits: [B, C] float.
        targets: dense teacher logits [B, C] or `CachedTargets` (cached at T and 1).
        labels: [B] integer class indices.
        temperature: T > 0.
        alpha: TCKD weight, >= 0.
        beta: NCKD weight, >= 0.
        ce_weight: CE weight, >= 0.

    Returns:
        Scalar tensor (float32; float64 for float64 logits).

    Raises:
        LossInputError, TemperatureNotCachedError: bad inputs, or T not cached.
    """
    alpha = check_weight("alpha", alpha)
    beta = check_weight("beta", beta)
    ce_weight = check_weight("ce_weight", ce_weight)
    logits, labels, temperature = prepare(student_logits, targets, labels, temperature)
    gt = labels[:, None]
    is_gt = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, gt, True)

    scaled = logits / temperature
    lse_all = torch.logsumexp(scaled, dim=1)
    others = scaled.masked_fill(is_gt, -math.inf)
    lse_others = torch.logsumexp(others, dim=1)
    log_s_gt = scaled.gather(1, gt)[:, 0] - lse_all
    log_s_rest = lse_others - lse_all
    log_s_nontarget = others - lse_others[:, None]  # -inf at the true class

    log_t = teacher_log_probs(targets, labels, logits.shape[1], temperature, logits.dtype)
    log_t_gt = log_t.gather(1, gt)[:, 0]
    log_t_others = log_t.masked_fill(is_gt, -math.inf)
    log_t_rest = torch.logsumexp(log_t_others, dim=1)
    t_gt, t_rest = log_t_gt.exp(), log_t_rest.exp()

    tckd = t_gt * (log_t_gt - log_s_gt) + torch.where(
        t_rest > 0, t_rest * (log_t_rest - log_s_rest), 0.0
    )
    log_t_nontarget = log_t_others - log_t_rest[:, None]
    p_t_nontarget = log_t_nontarget.exp()
    # where(): the true class contributes nothing (0 * (-inf - -inf) would be NaN).
    nckd = torch.where(is_gt, 0.0, p_t_nontarget * (log_t_nontarget - log_s_nontarget)).sum(1)
    loss = temperature**2 * (alpha * tckd.mean() + beta * nckd.mean())
    if ce_weight > 0:
        loss = loss + ce_weight * F.cross_entropy(logits, labels)
    return loss
