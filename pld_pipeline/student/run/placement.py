"""Where a student run computes: its device, autocast dtype, memory format and input normalisation.

The device and AMP words are resolved by the policy both wings share
(`pld_pipeline.device_policy`); this module adds what only a student needs.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.device_policy import resolve_amp
from pld_pipeline.student.run.ddp import DistContext
from pld_pipeline.views import normalize_batch


@dataclass(frozen=True)
class Placement:
    """How student inputs reach the device: dtype policy, memory format, normalisation."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> normalised float32 on the device."""
        return normalize_batch(images, self.mean, self.std, self.device, self.channels_last)

    def autocast(self) -> AbstractContextManager:
        """Mixed precision as configured (a no-op context without AMP)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """The loss scaler: active with fp16 autocast only (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


def make_placement(config: TrainConfig, ctx: DistContext) -> Placement:
    """This rank's device ('auto' and 'cuda' -> its GPU), the AMP dtype of the shared policy,
    and channels_last (default: on for CUDA)."""
    device = ctx.device(config.device)
    channels_last = config.channels_last
    if channels_last is None:
        channels_last = device.type == "cuda"
    amp_dtype = resolve_amp(config.amp, device)
    return Placement(device, amp_dtype, channels_last, config.student.mean, config.student.std)
