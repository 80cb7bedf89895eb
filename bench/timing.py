"""Timing and peak-memory helpers shared by the benchmark scripts.

Time: the median of repeated calls after a warm-up, synchronising CUDA around each call.
Peak memory: bytes allocated above what was live before the call. On CUDA this is
torch.cuda.max_memory_allocated; on CPU the torch profiler's allocator events (every
allocation and free with its size) are replayed in order and their running sum's maximum
is taken, a figure comparable across functions run on the same inputs.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch

__all__ = ["median_time", "peak_memory", "sync"]


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work on `device` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[], object], device: torch.device, repeats: int = 50, warmup: int = 5
) -> float:
    """Median wall time of `fn()` in seconds over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's native start/stop lines written straight to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by one call of `fn()` above the memory live before it."""
    fn()  # warm: one-time allocations (autograd graph caches, workspaces) happen here
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
