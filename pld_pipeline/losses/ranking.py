"""The teacher-optimal ranking of dense PLD: the label, then the classes by teacher logit.

Ties go to the lower class index. On CUDA (and for float64 logits) this is one stable
torch.argsort. On CPU, torch's row-wise argsort is slow (about 4x a whole KD step at
B=256, C=1000), so the order comes from sorting packed int64 keys with numpy, whose sort
of 64-bit integers is vectorised: key = -(order-preserving int32 image of the float32
logit) << b | class, b = bits of C - 1. Keys are distinct, so any sort gives the same
(stable) order, and the class is read back from the low bits.
"""

from __future__ import annotations

import math

import torch

__all__ = ["label_first_order"]


def _order_keys(teacher: torch.Tensor, labels: torch.Tensor, bits: int) -> torch.Tensor:
    """int64 keys [B, C] whose ascending order is pi*: the label, then descending logit."""
    classes = teacher.shape[1]
    # +0.0 turns -0.0 into +0.0, which compare equal as floats and must tie here too.
    raw = (teacher.float() + 0.0).view(torch.int32)
    # Sign-magnitude to two's complement: negative floats get their magnitude bits flipped.
    monotone = raw ^ ((raw >> 31) & 0x7FFFFFFF)
    # key = (-monotone) << bits | class: descending logit, then ascending class.
    index = torch.arange(classes, device=teacher.device)
    keys = monotone.long().mul_(-(1 << bits)).add_(index)  # one int64 [B, C] buffer
    bottom = labels - (1 << (31 + bits))  # below every logit's key
    return keys.scatter_(1, labels[:, None], bottom[:, None])


def label_first_order(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """pi*: [B, C] int64, the label first, then classes by descending teacher logit.

    Args:
        teacher_logits: [B, C] finite float logits.
        labels: [B] int64.

    Returns:
        [B, C] int64 permutation of the classes per row.
    """
    classes = teacher_logits.shape[1]
    bits = max(1, (classes - 1).bit_length())
    if teacher_logits.device.type != "cpu" or teacher_logits.dtype == torch.float64:
        forced = teacher_logits.scatter(1, labels[:, None], math.inf)
        return torch.argsort(forced, dim=1, descending=True, stable=True)
    keys = _order_keys(teacher_logits, labels, bits)
    keys.numpy().sort(axis=1)  # in place; numpy releases the GIL here
    return keys.bitwise_and_((1 << bits) - 1)
