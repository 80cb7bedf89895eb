"""Boundary checks shared by the losses: shapes, dtypes, ranges, finiteness.

Each check costs a few small reductions and no [B, C] temporaries beyond one sum, so the
losses can run them on every call. The value checks (label range, finiteness) read a
result back to the host; inside `host_sync.no_host_sync()` they are skipped (a training
loop validates once before its first step instead).
"""

from __future__ import annotations

import math

import torch

from .errors import LossInputError
from .host_sync import host_sync_allowed

__all__ = [
    "check_labels",
    "check_student",
    "check_temperature",
    "check_dense_teacher",
    "check_finite",
    "check_weight",
]


def check_student(student_logits: torch.Tensor) -> tuple[int, int]:
    """Check student logits [B, C] and return (B, C).

    Raises:
        LossInputError: not a floating tensor of shape [B, C] with B >= 1 and C >= 2.
    """
    if not isinstance(student_logits, torch.Tensor):
        raise LossInputError(
            f"student_logits must be a torch.Tensor [B, C], got {type(student_logits).__name__}."
        )
    if student_logits.dim() != 2 or student_logits.shape[0] < 1 or student_logits.shape[1] < 2:
        raise LossInputError(
            f"student_logits must have shape [B, C] with B >= 1 and C >= 2, got "
            f"{tuple(student_logits.shape)}; pass one row of class logits per example."
        )
    if not student_logits.is_floating_point():
        raise LossInputError(
            f"student_logits must be floating point, got {student_logits.dtype}; "
            "pass the model's raw logits."
        )
    return student_logits.shape[0], student_logits.shape[1]


def check_labels(labels: torch.Tensor, batch_size: int, num_classes: int) -> torch.Tensor:
    """Check labels [B] against the batch and class count; return them as int64.

    Raises:
        LossInputError: wrong type, shape or dtype, or a label outside [0, C).
    """
    if not isinstance(labels, torch.Tensor):
        raise LossInputError(f"labels must be a torch.Tensor [B], got {type(labels).__name__}.")
    if labels.dim() != 1 or labels.shape[0] != batch_size:
        raise LossInputError(
            f"labels must have shape [B] = [{batch_size}] to match student_logits, got "
            f"{tuple(labels.shape)}."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise LossInputError(f"labels must be an integer tensor, got {labels.dtype}.")
    if labels.numel() == 0 or not host_sync_allowed():
        return labels.long()
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise LossInputError(
            f"label {bad} is out of range for C = {num_classes} classes (labels must lie in "
            f"[0, {num_classes - 1}]); check the dataset's class count against the model head."
        )
    return labels.long()


def check_temperature(temperature: float) -> float:
    """Return the temperature as a float, checking it is finite and > 0.

    Raises:
        LossInputError: not a finite positive number.
    """
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise LossInputError(f"temperature must be a number > 0, got {temperature!r}.") from None
    if not math.isfinite(value) or value <= 0.0:
        raise LossInputError(f"temperature must be finite and > 0, got {temperature!r}.")
    return value


def check_weight(name: str, value: float, upper: float | None = None) -> float:
    """Return a loss weight as a float, checking 0 <= value (<= upper when given).

    Raises:
        LossInputError: not a finite number in range.
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise LossInputError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(out) or out < 0.0 or (upper is not None and out > upper):
        span = f"[0, {upper}]" if upper is not None else ">= 0"
        raise LossInputError(f"{name} must be a finite number in {span}, got {value!r}.")
    return out


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise if a teacher tensor holds NaN or +-Inf.

    A plain sum is the fast path (NaN and Inf propagate into it); only when it is not
    finite, which large finite values can also cause, is the exact element test run.

    Raises:
        LossInputError: the tensor holds NaN or Inf.
    """
    if tensor.numel() == 0 or not host_sync_allowed():
        return
    # Half precision sums overflow at 65504: accumulate those in float32.
    acc = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else None
    if bool(torch.isfinite(tensor.sum(dtype=acc))):
        return
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()[0].tolist()
    value = tensor[tuple(bad)].item()
    raise LossInputError(
        f"{what} holds a non-finite value ({value}) at index {tuple(bad)}; the teacher "
        "targets must be finite: check the cache (or the teacher pass) for NaN/Inf."
    )


def check_dense_teacher(teacher_logits: torch.Tensor, batch_size: int, num_classes: int) -> None:
    """Check dense teacher logits [B, C] against the student's shape and for NaN/Inf.

    Raises:
        LossInputError: wrong shape or dtype, or a non-finite value.
    """
    if teacher_logits.dim() != 2 or tuple(teacher_logits.shape) != (batch_size, num_classes):
        raise LossInputError(
            f"dense teacher logits must have the student's shape [B, C] = "
            f"[{batch_size}, {num_classes}], got {tuple(teacher_logits.shape)}."
        )
    if not teacher_logits.is_floating_point():
        raise LossInputError(
            f"dense teacher logits must be floating point, got {teacher_logits.dtype}."
        )
    check_finite(teacher_logits, "dense teacher logits")
