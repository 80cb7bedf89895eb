"""Distillation losses with one signature: loss(student_logits [B, C], targets, labels [B]).

`targets` is a batch's teacher signal: dense teacher logits [B, C] or `CachedTargets` (the
compact top-K form of a cache). Every loss returns the batch mean, computes in float32
(float64 for float64 logits) and checks its inputs (`LossInputError`). `make_loss(name,
**params)` builds a configured loss for configs and sweeps.

- pld (`pld.py`, kernel in `pld_kernel.py`): exact from dense logits; from compact targets
  the label and the top-K are ranked with exact weights and the rest is dropped
  (`pld_dropped_weight`).
- kd, dist, dkd: from compact targets the teacher distribution over C spreads the mass
  outside the label and the top-K evenly over those classes (`teacher.py`).
- ce: the labels only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .ce import ce_loss
from .dist import dist_loss
from .dkd import dkd_loss
from .errors import LossInputError, TemperatureNotCachedError
from .host_sync import host_sync_allowed, no_host_sync
from .kd import kd_loss
from .pld import pld_dropped_weight, pld_loss, pld_loss_and_dropped_weight
from .targets import CachedTargets, Targets
from .validation import check_temperature, check_weight

__all__ = [
    "LOSS_NAMES",
    "CachedTargets",
    "LossFn",
    "LossInputError",
    "TemperatureNotCachedError",
    "Targets",
    "ce_loss",
    "dist_loss",
    "dkd_loss",
    "kd_loss",
    "host_sync_allowed",
    "make_loss",
    "no_host_sync",
    "pld_dropped_weight",
    "pld_loss",
]

LOSS_NAMES = ("ce", "kd", "dist", "dkd", "pld")

_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "ce": ce_loss,
    "kd": kd_loss,
    "dist": dist_loss,
    "dkd": dkd_loss,
    "pld": pld_loss,
}


def _defaults(fn: Callable[..., torch.Tensor]) -> dict[str, Any]:
    """The keyword parameters after (student_logits, targets, labels), with defaults."""
    params = list(inspect.signature(fn).parameters.values())[3:]
    return {p.name: p.default for p in params}


class LossFn:
    """A configured loss: ``loss_fn(student_logits, targets, labels) -> scalar``.

    Attributes:
        name: one of LOSS_NAMES.
        params: every parameter of the loss, defaults filled in.
        last_dropped_weight: for "pld", the batch mean of the teacher weight the last call
            dropped (compact targets), None for dense targets or before the first call;
            always None for other losses.
    """

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name = name
        self.params = dict(params)
        self._fn = _FUNCTIONS[name]
        self._dropped: torch.Tensor | None = None

    @property
    def last_dropped(self) -> torch.Tensor | None:
        """PLD's dropped teacher weight per example of the last call, [B] on the device
        (None for dense targets, other losses, or before the first call); no read-back."""
        return self._dropped

    @property
    def last_dropped_weight(self) -> float | None:
        # Converted on access only: .item() would synchronise a GPU on every step.
        return None if self._dropped is None else float(self._dropped.mean())

    def __call__(
        self, student_logits: torch.Tensor, targets: Targets | None, labels: torch.Tensor
    ) -> torch.Tensor:
        if self.name == "pld":
            loss, self._dropped = pld_loss_and_dropped_weight(
                student_logits, targets, labels, **self.params
            )
            return loss
        return self._fn(student_logits, targets, labels, **self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"LossFn({self.name!r}, {args})"


def make_loss(name: str, **params: Any) -> LossFn:
    """Build a loss by name with its parameters bound.

    Args:
        name: one of LOSS_NAMES: "ce", "kd", "dist", "dkd", "pld".
        **params: keyword parameters of that loss (e.g. temperature, ce_weight).

    Returns:
        LossFn, callable as ``(student_logits, targets, labels) -> scalar``.

    Raises:
        LossInputError: unknown name or parameter, or a parameter value out of range.
    """
    if name not in _FUNCTIONS:
        raise LossInputError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}.")
    defaults = _defaults(_FUNCTIONS[name])
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise LossInputError(
            f"loss {name!r} has no parameter {', '.join(map(repr, unknown))}; its parameters "
            f"are {', '.join(defaults) or '(none)'}."
        )
    for key, value in params.items():
        # Fail at configuration time, not at the first batch.
        if key == "temperature":
            check_temperature(value)
        else:
            bounded = key == "label_smoothing" or (name == "kd" and key == "ce_weight")
            check_weight(key, value, upper=1.0 if bounded else None)
    return LossFn(name, {**defaults, **params})
