"""What compact (top-K) targets keep of a dense teacher: tail mass, KL, gradient error.

Used by `bench/fidelity.py` to measure, on a real teacher, what a top-K cache costs each
loss. Everything runs in float64 on dense teacher logits [B, C], the reference:

- `compact_targets`: the targets a top-K cache of these logits gives the losses (what
  `CacheReader.load_view(k=...)` gives from a full cache, without float16 rounding);
- `reconstruction_kl`: KL(teacher at T || the distribution the compact targets give KD,
  DIST and DKD: exact top-K and label, the rest spread evenly, `teacher.teacher_log_probs`);
- `gradient_error`: relative error of a loss's gradient w.r.t. the student logits,
  compact against dense targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .targets import CachedTargets
from .teacher import teacher_log_probs

__all__ = ["compact_targets", "gradient_error", "reconstruction_kl", "top_k_tail_mass"]


def compact_targets(
    logits: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    temperatures: Sequence[float],
) -> CachedTargets:
    """The compact targets of a top-k cache of dense teacher logits, in float64.

    Args:
        logits: [B, C] dense teacher logits.
        labels: [B] true classes.
        k: classes kept, 1 <= k <= C.
        temperatures: cached temperatures (must include 1.0 for the losses).

    Returns:
        CachedTargets with topk_idx [B, k] int64 (descending logit; ties to the lower
        index), topk_logp [B, k], lse [B, nT], gt_logit [B], all float64.
    """
    z = logits.double()
    # Stable sort of -z: equal logits keep the lower class first, as the losses' references.
    order = torch.argsort(-z, dim=1, stable=True)[:, :k]
    lse = torch.stack([torch.logsumexp(z / float(t), dim=1) for t in temperatures], dim=1)
    lse1 = torch.logsumexp(z, dim=1, keepdim=True)
    return CachedTargets(
        topk_idx=order,
        topk_logp=z.gather(1, order) - lse1,
        lse=lse,
        temperatures=tuple(float(t) for t in temperatures),
        gt_logit=z.gather(1, labels.long()[:, None])[:, 0],
    )


def top_k_tail_mass(logits: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Teacher probability at T outside its top-k classes, [B] float64."""
    p = torch.softmax(logits.double() / temperature, dim=1)
    return (1.0 - p.topk(k, dim=1).values.sum(dim=1)).clamp_min(0.0)


def reconstruction_kl(
    logits: torch.Tensor, targets: CachedTargets, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(logits / T) || what `targets` give KD, DIST and DKD at T), per example [B].

    Args:
        logits: [B, C] dense teacher logits (the reference).
        targets: compact targets of the same batch, cached at T and 1.
        labels: [B] true classes.
        temperature: T > 0.

    Returns:
        [B] float64, >= 0 (0 when nothing is left out).
    """
    log_p = torch.log_softmax(logits.double() / temperature, dim=1)
    log_q = teacher_log_probs(targets, labels.long(), logits.shape[1], temperature, torch.float64)
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=1).clamp_min(0.0)


def gradient_error(
    loss_fn: object,
    student_logits: torch.Tensor,
    reference: CachedTargets | torch.Tensor,
    targets: CachedTargets | torch.Tensor,
    labels: torch.Tensor,
) -> float:
    """||grad(targets) - grad(reference)|| / ||grad(reference)|| of a loss's batch gradient
    w.r.t. the student logits (Frobenius norms over the batch), in float64.

    Args:
        loss_fn: ``(student_logits, targets, labels) -> scalar``, e.g. `make_loss(...)`.
        student_logits: [B, C] logits of a student.
        reference: the targets compared against (dense logits, or an fp16 record's).
        targets: the targets measured (compact, or a q8 record's).
        labels: [B] true classes.

    Returns:
        The relative error (0.0 when both gradients are 0).
    """
    grads = []
    for target in (reference, targets):
        s = student_logits.detach().double().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(s, target, labels.long()), s)
        grads.append(grad)
    scale = float(grads[0].norm())
    diff = float((grads[1] - grads[0]).norm())
    return 0.0 if scale == 0.0 and diff == 0.0 else diff / max(scale, 1e-300)
