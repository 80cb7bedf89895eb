"""Cross-entropy with the true labels, in the losses' common signature (teacher unused)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import prepare
from .targets import Targets
from .validation import check_weight

__all__ = ["ce_loss"]


def ce_loss(
    student_logits: torch.Tensor,
    targets: Targets | None,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Batch-mean cross-entropy of the student against the labels.

    Args:
        student_logits: [B, C] float.
        targets: ignored (accepted, and checked when given, for the common signature).
        labels: [B] integer class indices.
        label_smoothing: in [0, 1], as in `torch.nn.functional.cross_entropy`.

    Returns:
        Scalar tensor (float32; float64 for float64 logits).

    Raises:
        LossInputError: bad shapes, labels out of range, bad targets, bad smoothing.
    """
    label_smoothing = check_weight("label_smoothing", label_smoothing, upper=1.0)
    logits, labels, _ = prepare(student_logits, targets, labels)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
