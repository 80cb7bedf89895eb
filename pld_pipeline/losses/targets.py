"""Teacher targets as the losses receive them: dense logits or the compact cached form.

The compact form holds, per example, the teacher's top-K classes with their log
probabilities at T = 1, the logsumexp of the teacher logits at each cached temperature and
the teacher logit of the true class. From these the exact teacher probability at any cached
temperature T of every cached class is known: t = topk_logp + lse(T=1), p_T = exp(t/T - lse(T)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .errors import LossInputError, TemperatureNotCachedError
from .host_sync import host_sync_allowed
from .validation import check_finite

__all__ = ["CachedTargets", "Targets", "RankedWeights", "ranked_weights", "temperature_index"]


def temperature_index(temperatures: tuple[float, ...], temperature: float) -> int | None:
    """Position of `temperature` in `temperatures` (relative tolerance 1e-6), or None."""
    for j, cached in enumerate(temperatures):
        if math.isclose(cached, temperature, rel_tol=1e-6, abs_tol=1e-12):
            return j
    return None


@dataclass(frozen=True)
class CachedTargets:
    """Compact teacher targets of one batch, as stored in a top-K cache.

    Attributes:
        topk_idx: [B, K] integer class indices, teacher order (descending logit).
        topk_logp: [B, K] log softmax of the teacher logits at T = 1, same order.
        lse: [B, nT] float logsumexp(teacher / temperatures[j]).
        temperatures: the nT cached temperatures.
        gt_logit: [B] teacher logit of the true class.

    Raises:
        LossInputError: shapes or dtypes do not fit together (checked at construction;
            values are checked by the losses).
    """

    topk_idx: torch.Tensor
    topk_logp: torch.Tensor
    lse: torch.Tensor
    temperatures: tuple[float, ...]
    gt_logit: torch.Tensor

    def __post_init__(self) -> None:
        temps = tuple(float(t) for t in self.temperatures)
        object.__setattr__(self, "temperatures", temps)
        if self.topk_idx.dim() != 2 or self.topk_idx.shape[1] < 1:
            raise LossInputError(
                f"topk_idx must have shape [B, K] with K >= 1, got {tuple(self.topk_idx.shape)}."
            )
        if self.topk_idx.is_floating_point() or self.topk_idx.dtype == torch.bool:
            raise LossInputError(f"topk_idx must be an integer tensor, got {self.topk_idx.dtype}.")
        if tuple(self.topk_logp.shape) != tuple(self.topk_idx.shape):
            raise LossInputError(
                f"topk_logp must have the shape of topk_idx {tuple(self.topk_idx.shape)}, got "
                f"{tuple(self.topk_logp.shape)}."
            )
        if not self.topk_logp.is_floating_point():
            raise LossInputError(f"topk_logp must be floating point, got {self.topk_logp.dtype}.")
        batch = self.topk_idx.shape[0]
        if not temps or any(not math.isfinite(t) or t <= 0 for t in temps):
            raise LossInputError(
                f"temperatures must be a non-empty tuple of finite numbers > 0, got {temps}."
            )
        if tuple(self.lse.shape) != (batch, len(temps)):
            raise LossInputError(
                f"lse must have shape [B, nT] = [{batch}, {len(temps)}] (one column per cached "
                f"temperature {temps}), got {tuple(self.lse.shape)}."
            )
        if tuple(self.gt_logit.shape) != (batch,):
            raise LossInputError(
                f"gt_logit must have shape [B] = [{batch}], got {tuple(self.gt_logit.shape)}."
            )

    @property
    def batch_size(self) -> int:
        """B, the number of examples."""
        return self.topk_idx.shape[0]

    @property
    def k(self) -> int:
        """K, the number of cached classes per example."""
        return self.topk_idx.shape[1]

    @property
    def device(self) -> torch.device:
        """Device of the tensors."""
        return self.topk_idx.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CachedTargets:
        """Copy of the targets on `device`."""
        return CachedTargets(
            topk_idx=self.topk_idx.to(device, non_blocking=non_blocking),
            topk_logp=self.topk_logp.to(device, non_blocking=non_blocking),
            lse=self.lse.to(device, non_blocking=non_blocking),
            temperatures=self.temperatures,
            gt_logit=self.gt_logit.to(device, non_blocking=non_blocking),
        )

    def lse_at(self, temperature: float) -> torch.Tensor:
        """logsumexp(teacher / temperature) [B].

        Raises:
            TemperatureNotCachedError: `temperature` is not one of the cached ones.
        """
        j = temperature_index(self.temperatures, float(temperature))
        if j is None:
            raise TemperatureNotCachedError(
                f"temperature {temperature} is not cached (cached: "
                f"{', '.join(f'{t:g}' for t in self.temperatures)}); pick one of these or "
                "re-run the teacher cache with it among its temperatures."
            )
        return self.lse[:, j]

    def truncate(self, k: int) -> CachedTargets:
        """The same targets keeping only the first `k` cached classes.

        Raises:
            LossInputError: k is not in [1, K].
        """
        if not 1 <= int(k) <= self.k:
            raise LossInputError(f"truncate(k) needs 1 <= k <= K = {self.k}, got {k}.")
        k = int(k)
        return CachedTargets(
            self.topk_idx[:, :k], self.topk_logp[:, :k], self.lse, self.temperatures, self.gt_logit
        )

    def check(self, batch_size: int, num_classes: int) -> None:
        """Check the targets against the student's [B, C] and for bad values.

        Raises:
            LossInputError: batch mismatch, K > C, a class index outside [0, C), or NaN/Inf.
        """
        if self.batch_size != batch_size:
            raise LossInputError(
                f"cached targets hold {self.batch_size} examples but student_logits has "
                f"B = {batch_size}; pass the targets of the same batch."
            )
        if self.k > num_classes:
            raise LossInputError(
                f"cached targets have K = {self.k} classes per example but the student has only "
                f"C = {num_classes}; the cache belongs to another class set."
            )
        if not host_sync_allowed():
            return  # value checks read back to the host: done once before training instead
        lo, hi = int(self.topk_idx.min()), int(self.topk_idx.max())
        if lo < 0 or hi >= num_classes:
            raise LossInputError(
                f"topk_idx holds class {lo if lo < 0 else hi}, outside [0, {num_classes - 1}] for "
                f"C = {num_classes}; the cache belongs to another class set."
            )
        check_finite(self.topk_logp, "cached topk_logp")
        check_finite(self.lse, "cached lse")
        check_finite(self.gt_logit, "cached gt_logit")


Targets = torch.Tensor | CachedTargets
"""Teacher targets of a batch: dense teacher logits [B, C] or `CachedTargets`."""


class RankedWeights(NamedTuple):
    """Exact teacher log-weights at T of the label and of the cached classes.

    A cached slot holding the label itself is invalid for ranking (the label is ranked
    first on its own): its log weight is -inf and `label_in_top` is True there.

    Attributes:
        label_log_weight: [B] log softmax(teacher / T) of the label.
        top_log_weight: [B, K] the same of each cached class (-inf where it is the label).
        label_in_top: [B, K] bool, where the cached class is the label.
    """

    label_log_weight: torch.Tensor
    top_log_weight: torch.Tensor
    label_in_top: torch.Tensor


def ranked_weights(
    targets: CachedTargets,
    labels: torch.Tensor,
    temperature: float,
    dtype: torch.dtype = torch.float64,
) -> RankedWeights:
    """Exact teacher log-weights at `temperature` of the label and of the cached classes.

    Args:
        targets: compact targets, already checked.
        labels: [B] int64.
        temperature: T > 0; T and 1.0 must both be cached.
        dtype: float dtype of the results (the arithmetic is done in it).

    Returns:
        RankedWeights ([B] and [B, K] tensors).

    Raises:
        TemperatureNotCachedError: T, or T = 1 (needed to turn topk_logp back into teacher
            logits: t = topk_logp + lse(T=1)), is not cached.
    """
    if temperature_index(targets.temperatures, 1.0) is None:
        raise TemperatureNotCachedError(
            "cached targets need lse at T = 1 to recover the teacher logits from topk_logp "
            f"(cached: {', '.join(f'{t:g}' for t in targets.temperatures)}); re-run the "
            "teacher cache with 1.0 among its temperatures."
        )
    lse_t = targets.lse_at(temperature).to(dtype)
    log_p = targets.topk_logp.to(dtype)
    if temperature_index((1.0,), temperature) is not None:
        log_w_top = log_p  # at T = 1 the cached log-probabilities are the weights
        log_w_label = targets.gt_logit.to(dtype) - lse_t
    else:
        inv_t = 1.0 / temperature
        lse_1 = targets.lse_at(1.0).to(dtype)
        log_w_top = (log_p + lse_1[:, None]) * inv_t - lse_t[:, None]
        log_w_label = targets.gt_logit.to(dtype) * inv_t - lse_t
    label_in_top = targets.topk_idx == labels[:, None]
    return RankedWeights(log_w_label, log_w_top.masked_fill(label_in_top, -math.inf), label_in_top)
