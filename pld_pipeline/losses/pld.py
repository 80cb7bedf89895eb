"""Plackett-Luce Distillation (PLD) loss from dense or compact teacher targets.

PLD (Bassam, Zhu, Bian, arXiv 2506.12542, NeurIPS 2025) weights the Plackett-Luce
negative log-likelihood of the teacher-optimal ranking pi* by the teacher's probabilities:
pi*_1 is the true label, then the other classes by descending teacher logit, and

    L = sum_k a_k * ( logsumexp_{l >= k} s[pi*_l] - s[pi*_k] ),   a_k = softmax(t / T)[pi*_k].

T touches only the teacher weights; the student logits are never divided by T.

Dense targets: exact over all C positions. One sort gives pi* (ties go to the lower
class index; see `ranking`), and the ranked kernel (`pld_kernel`) runs on the whole
permutation with no unranked remainder.

Compact targets (`CachedTargets`): the ranked positions are the label, then the cached
top-K classes without the label, in teacher order; their weights are exact. Each
denominator holds the ranked logits from position k on plus every unranked class. The
terms of positions past the cache are dropped; their total teacher weight, 1 - sum of the
ranked weights, is what `pld_dropped_weight` returns (and `make_loss("pld")` keeps as
`last_dropped_weight`). When the label is among the top-K the ranking holds K positions
(the cache does not know the (K+1)-th teacher class), otherwise K + 1. With K = C - 1 the
one class left out is the teacher's last, found from the index sum and ranked last, so the
loss equals the dense one (its weight is still reported as dropped, though its term is 0);
with K = C likewise. Rows of topk_idx must hold distinct classes (not checked: a sort).
Neither form sorts over C in the compact case nor builds a dense [B, C] teacher.
"""

from __future__ import annotations

import torch

from .common import check_inputs, compute_dtype
from .errors import LossInputError
from .host_sync import host_sync_allowed
from .pld_kernel import ranked_pld
from .ranking import label_first_order
from .targets import CachedTargets, Targets, ranked_weights
from .validation import check_labels, check_temperature

__all__ = ["pld_loss", "pld_dropped_weight", "pld_loss_and_dropped_weight"]


def _dense(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Exact PLD: the label, then the teacher's order (stable: ties go to the lower index)."""
    rest = label_first_order(teacher_logits, labels)[:, 1:]
    scaled = teacher_logits.to(compute_dtype(student_logits))
    if temperature != 1.0:
        scaled = scaled / temperature
    prob = torch.softmax(scaled, dim=1)
    label_weight = prob.gather(1, labels[:, None])[:, 0]
    return ranked_pld(
        student_logits, labels, label_weight, rest, prob.gather(1, rest), None, "none"
    )


def _compact(
    student_logits: torch.Tensor, targets: CachedTargets, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PLD over the label and the cached classes; returns (loss, dropped weight [B])."""
    classes = student_logits.shape[1]
    ranked = ranked_weights(targets, labels, temperature, compute_dtype(student_logits))
    label_weight = ranked.label_log_weight.exp()
    weight = ranked.top_log_weight.exp()
    idx = targets.topk_idx.long()
    dropped = 1.0 - label_weight - weight.sum(dim=1)
    tail = None
    if targets.k == classes - 1:
        # A full ranking but for the teacher's last class, which the index sum identifies
        # (rows of topk_idx are distinct classes). Ranked last, its term is 0 whatever its
        # weight: the loss is the dense one (the dropped weight still reports its weight).
        tail = classes * (classes - 1) // 2 - idx.sum(dim=1)
        if host_sync_allowed() and bool(((tail < 0) | (tail >= classes)).any()):
            raise LossInputError(
                f"cached targets with K = C - 1 = {targets.k} must list distinct classes per "
                "row, but a row of topk_idx repeats one; check the cache."
            )
    unranked = "rest" if targets.k < classes - 1 else ("tail" if tail is not None else "none")
    loss = ranked_pld(
        student_logits, labels, label_weight, idx, weight, ranked.label_in_top, unranked, tail
    )
    return loss, dropped.clamp(0.0, 1.0).float()


def pld_loss_and_dropped_weight(
    student_logits: torch.Tensor,
    targets: Targets,
    labels: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PLD loss and, for compact targets, the dropped teacher weight [B] (None if dense).

    Same arguments, returns and errors as `pld_loss`.
    """
    labels, temperature = check_inputs(student_logits, targets, labels, temperature)
    if isinstance(targets, CachedTargets):
        return _compact(student_logits, targets, labels, temperature)
    return _dense(student_logits, targets, labels, temperature), None


def pld_loss(
    student_logits: torch.Tensor,
    targets: Targets,
    labels: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Batch-mean PLD loss.

    Args:
        student_logits: [B, C] float (fp16/bf16 are computed in float32).
        targets: dense teacher logits [B, C] or `CachedTargets`.
        labels: [B] integer class indices.
        temperature: T > 0 for the teacher weights softmax(t / T); compact targets must be
            cached at T and at 1.

    Returns:
        Scalar tensor (float32; float64 for float64 logits), differentiable w.r.t. the
        student logits (analytic gradient, custom autograd function).

    Raises:
        LossInputError: bad shapes, dtypes, labels out of range, NaN/Inf in the targets,
            K > C, temperature <= 0.
        TemperatureNotCachedError: compact targets lack T (or T = 1).
    """
    return pld_loss_and_dropped_weight(student_logits, targets, labels, temperature)[0]


def pld_dropped_weight(
    targets: Targets, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Teacher weight of the positions compact PLD drops, [B].

    1 - (teacher probability at T of the label and of the cached classes), in float64 then
    float32. Zero for dense targets (every position is kept).

    Args:
        targets: dense teacher logits [B, C] or `CachedTargets`.
        labels: [B] integer class indices.
        temperature: T of the weights; compact targets must be cached at T and at 1.

    Returns:
        [B] float32 in [0, 1].

    Raises:
        LossInputError, TemperatureNotCachedError: as `pld_loss`.
    """
    temperature = check_temperature(temperature)
    if isinstance(targets, torch.Tensor):
        if targets.dim() != 2:
            raise LossInputError(
                f"dense teacher logits must have shape [B, C], got {tuple(targets.shape)}."
            )
        check_labels(labels, targets.shape[0], targets.shape[1])
        return torch.zeros(targets.shape[0], device=targets.device)
    if not isinstance(targets, CachedTargets):
        raise LossInputError(
            f"targets must be dense teacher logits [B, C] or CachedTargets, got "
            f"{type(targets).__name__}."
        )
    # C is unknown here: labels are checked for shape and sign only.
    labels = check_labels(labels, targets.batch_size, num_classes=2**62)
    ranked = ranked_weights(targets, labels, temperature)
    mass = ranked.label_log_weight.exp() + ranked.top_log_weight.exp().sum(dim=1)
    return (1.0 - mass).clamp(0.0, 1.0).float()
