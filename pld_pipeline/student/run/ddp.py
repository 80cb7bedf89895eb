"""Distributed data parallel plumbing: the process-group context and its reductions.

One large student over several GPUs (or CPU processes on gloo), started by
`torchrun -m pld_pipeline.student.torchrun_entry`. Each rank reads the same cache and gathers
the targets of its own share of every global batch (TrainConfig.batch_size is the global
batch; each rank takes batch_size / world_size). Rank 0 alone writes the run directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pld_pipeline.device_policy import resolve_device
from pld_pipeline.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. The default is a single process (no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one rank is running."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and logs progress."""
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The device of this rank: 'cuda'/'auto' map to cuda:<local_rank> when CUDA is used."""
        device = resolve_device(requested)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(
                    f"device={requested!r} but CUDA is not available; use device='cpu'."
                )
            if device.index is None:
                # torch.cuda.set_device refuses a device without an index (torch >= 2.11).
                index = self.local_rank if self.enabled else torch.cuda.current_device()
                device = torch.device("cuda", index)
            torch.cuda.set_device(device)
        return device

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum of `values` over all ranks (identity for one process)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        if device.type != "cuda":
            t = t.cpu()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.enabled:
            dist.barrier()


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK.

    Without those variables (a plain `python` run) this is a single process and no group
    starts. The backend defaults to nccl when CUDA is available, else gloo.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext()
    ctx = DistContext(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    if ctx.world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend)
    return ctx


def shutdown() -> None:
    """Leave the process group if one is running."""
    if dist.is_initialized():
        dist.destroy_process_group()
