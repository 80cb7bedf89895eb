"""Running a teacher on a device: model preparation and one forward (device and autocast
choice: `pld_pipeline.device_policy`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pld_pipeline.errors import ConfigError
from pld_pipeline.views import normalize_batch


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode on `device`, channels_last on CUDA (in place; idempotent)."""
    model.eval().to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def teacher_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Float32 logits [B, C] of images [B, 3, S, S]: uint8 pixels (normalised on `device`)
    or float inputs already normalised (by `_view_images.NormalizeCollate` in CPU workers).

    Call under torch.inference_mode with a model prepared by `prepare_model`.
    """
    channels_last = device.type == "cuda"
    if images.dtype == torch.uint8:
        x = normalize_batch(images, mean, std, device, channels_last=channels_last)
    else:
        x = images.to(device, dtype=torch.float32, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    ):
        out = model(x)
    if not isinstance(out, torch.Tensor):  # e.g. HF-style outputs or (logits, aux)
        out = getattr(out, "logits", None) if not isinstance(out, (tuple, list)) else out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ConfigError(
            f"The teacher must return logits [B, C]; for a batch of {x.shape[0]} it returned "
            f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}."
        )
    return out.float()
