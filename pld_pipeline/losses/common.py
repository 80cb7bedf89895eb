"""Argument checking and dtype choice shared by the distillation baselines (KD, DIST, DKD, CE)."""

from __future__ import annotations

import torch

from .errors import LossInputError
from .targets import CachedTargets, Targets
from .validation import check_dense_teacher, check_labels, check_student, check_temperature

__all__ = ["check_inputs", "compute_dtype", "prepare"]


def check_inputs(
    student_logits: torch.Tensor,
    targets: Targets | None,
    labels: torch.Tensor,
    temperature: float = 1.0,
    targets_required: bool = True,
) -> tuple[torch.Tensor, float]:
    """Check every loss's inputs; return (int64 labels, temperature as a float).

    Raises:
        LossInputError: see the validation module; also a `targets` of the wrong type
            (or None when `targets_required`).
    """
    batch, classes = check_student(student_logits)
    labels = check_labels(labels, batch, classes)
    temperature = check_temperature(temperature)
    if isinstance(targets, CachedTargets):
        targets.check(batch, classes)
    elif isinstance(targets, torch.Tensor):
        check_dense_teacher(targets, batch, classes)
    elif targets is not None or targets_required:
        raise LossInputError(
            f"targets must be dense teacher logits [B, C] or CachedTargets, got "
            f"{type(targets).__name__}."
        )
    return labels, temperature


def compute_dtype(student_logits: torch.Tensor) -> torch.dtype:
    """float64 for float64 logits, else float32 (fp16/bf16 are upcast)."""
    return torch.float64 if student_logits.dtype == torch.float64 else torch.float32


def prepare(
    student_logits: torch.Tensor,
    targets: Targets | None,
    labels: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Check a baseline's inputs; return (logits in compute dtype, int64 labels, T).

    The compute dtype is float32, or float64 for float64 logits: fp16/bf16 logits are
    upcast so the softmaxes and their gradients are taken in float32. `targets` may be
    None (CE ignores it).
    """
    labels, temperature = check_inputs(
        student_logits, targets, labels, temperature, targets_required=False
    )
    return student_logits.to(compute_dtype(student_logits)), labels, temperature
