"""The one device and mixed-precision policy of the teacher pass and student training.

Both wings resolve `device` and `amp` here, so 'auto' means the same on both sides: the
GPU when there is one, and bf16 autocast where that GPU supports it (else fp16). AMP is a
CUDA feature here: a CPU run is fp32 whatever `amp` says (a log line says so when the
config asked for a dtype), which keeps CPU results exact and comparable across runs.
"""

from __future__ import annotations

import logging

import torch

from pld_pipeline.configs.base import AMP_NAMES, amp_alias
from pld_pipeline.errors import ConfigError

logger = logging.getLogger(__name__)
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
    """The autocast dtype for `amp` (a word of `configs.base.AMP_NAMES`, a torch dtype, or
    None = 'off') on `device`: None means plain fp32.

    Raises:
        ConfigError: an unknown word, or a dtype other than bfloat16/float16.
    """
    if isinstance(amp, torch.dtype):
        if amp not in (torch.bfloat16, torch.float16):
            raise ConfigError(f"amp dtype must be bfloat16 or float16, got {amp}.")
    elif amp is not None:
        amp = amp_alias(amp)
        if amp not in AMP_NAMES:
            names = ", ".join(repr(name) for name in AMP_NAMES)
            raise ConfigError(f"Unknown amp {amp!r}; use one of {names}.")
    if amp is None or amp == "off":
        return None
    if device.type != "cuda":
        if amp != "auto":
            logger.info("amp=%r applies on CUDA only; this %s run is fp32.", amp, device.type)
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return amp if isinstance(amp, torch.dtype) else AMP_DTYPES[amp]


def uses_cuda(device: str) -> bool:
    """Whether work configured with `device` ('auto', 'cpu', 'cuda', 'cuda:N') runs on CUDA."""
    return resolve_device(device).type == "cuda"


def visible_gpu_count() -> int:
    """CUDA devices this process can see (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def release_cached_gpu_memory() -> None:
    """Give the CUDA caching allocator's free blocks back, so the next user of the GPU
    (maybe another process) finds the memory free."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
