"""How a teacher pass runs, as opposed to what it computes (that is the cache's manifest)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PassOptions:
    """Where and how fast the pass runs; nothing here changes a stored number.

    Attributes:
        device: "cpu", "cuda", "cuda:N" or "auto".
        batch_size: images per forward (samples per batch = batch_size // number of views).
        num_workers: DataLoader decoding processes (0: decode in the calling thread).
        amp: "auto", "bf16", "fp16", "off"/None or a torch dtype; used on CUDA only.
        skip_bad_images: record undecodable images as bad instead of stopping.
        multiprocessing_context: the DataLoader workers' start method ("fork", "spawn", ...).
    """

    device: str | torch.device = "cpu"
    batch_size: int = 64
    num_workers: int = 0
    amp: str | torch.dtype | None = None
    skip_bad_images: bool = False
    multiprocessing_context: str | None = None


# The defaults: CPU, batches of 64, no workers, fp32, a bad image stops the pass.
DEFAULT_OPTIONS = PassOptions()
