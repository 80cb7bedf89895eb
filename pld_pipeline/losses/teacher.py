"""The teacher's distribution over all C classes at a temperature, from either target form.

The distillation baselines (KD, DIST, DKD) need a full teacher distribution. Dense logits
give it exactly. The compact form knows the exact probability of the label and of the
cached top-K classes; the rest of the mass, 1 - (their sum), belongs to the unranked
classes in unknown proportions. We spread it evenly over them: the maximum-entropy choice
given what was cached, which keeps the total at 1 and the true class's probability exact
(DKD's target/non-target split is then exact too). With K = C - 1 nothing is spread.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .targets import CachedTargets, Targets, ranked_weights

__all__ = ["teacher_log_probs"]

# Log probability given to unranked classes when no mass is left for them: exp() of it is
# exactly 0, yet it stays finite so that 0 * (log p_t - log p_s) is 0, not NaN.
_NO_MASS = -1.0e30


def teacher_log_probs(
    targets: Targets,
    labels: torch.Tensor,
    num_classes: int,
    temperature: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """log softmax(teacher / T) over all classes, [B, C] in `dtype`.

    Args:
        targets: dense teacher logits [B, C] or `CachedTargets`, already checked.
        labels: [B] int64.
        num_classes: C.
        temperature: T > 0.
        dtype: float32 or float64, the dtype of the result.

    Returns:
        [B, C] finite log-probabilities (a class with no mass gets -1e30).

    Raises:
        TemperatureNotCachedError: compact targets lack T or T = 1.
    """
    if not isinstance(targets, CachedTargets):
        return F.log_softmax(targets.to(dtype) / temperature, dim=1)
    ranked = ranked_weights(targets, labels, temperature, dtype)
    n_ranked = 1 + (~ranked.label_in_top).sum(dim=1)
    n_unranked = (num_classes - n_ranked).clamp_min(1)
    mass = ranked.label_log_weight.double().exp() + ranked.top_log_weight.double().exp().sum(1)
    left = (1.0 - mass).clamp_min(0.0)
    fill = torch.where(left > 0, (left / n_unranked).log(), _NO_MASS)
    out = fill.to(dtype)[:, None].expand(-1, num_classes).contiguous()
    # Cached classes first, the label last: a cached slot holding the label writes -inf
    # (clamped) to its column, and the label's own write must be the one that stays.
    out.scatter_(1, targets.topk_idx.long(), ranked.top_log_weight.clamp_min(_NO_MASS))
    out.scatter_(1, labels[:, None], ranked.label_log_weight[:, None])
    return out
