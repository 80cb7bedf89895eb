"""Running a teacher on a device: device and autocast choice, model preparation, one forward."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pld_pipeline.errors import ConfigError
from pld_pipeline.views import normalize_batch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> cuda when available else cpu; anything else as torch.device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from exc


def resolve_amp(amp: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: None on the CPU (plain fp32) and for "off"/None; "auto" -> bf16 where
    the GPU supports it, else fp16."""
    if device.type != "cuda" or amp is None or amp == "off":
        return None
    if isinstance(amp, torch.dtype):
        if amp not in (torch.bfloat16, torch.float16):
            raise ConfigError(f"amp dtype must be bfloat16 or float16, got {amp}.")
        return amp
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp not in AMP_DTYPES:
        raise ConfigError(f"Unknown amp {amp!r}; use 'auto', 'bf16', 'fp16' or 'off'.")
    return AMP_DTYPES[amp]


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
    or float inputs already normalised (by `view_images.NormalizeCollate` in CPU workers).

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
