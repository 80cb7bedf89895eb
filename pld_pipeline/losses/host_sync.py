"""Switching off the losses' host-side value checks inside a training step.

Each loss checks its inputs' values on every call (labels in range, finite targets, class
indices in range). Reading a value back is free on the CPU but on a GPU every such read
waits for all queued work, once per check per step. A training loop validates its
inputs once before the first step instead (and the cache's slabs when they are loaded),
then runs its steps inside `no_host_sync()`: the shape and type checks stay, the value
checks are skipped, and PLD's precision fallback is decided on the device
(`pld_kernel.ranked_pld`).

The switch is a context variable, so threads (a sweep's parallel runs) do not see each
other's setting.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["host_sync_allowed", "no_host_sync"]

_NO_HOST_SYNC: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pld_losses_no_host_sync", default=False
)


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Within this block the losses read no tensor value back to the host."""
    token = _NO_HOST_SYNC.set(True)
    try:
        yield
    finally:
        _NO_HOST_SYNC.reset(token)


def host_sync_allowed() -> bool:
    """False inside `no_host_sync()`: value checks that read tensors back are skipped."""
    return not _NO_HOST_SYNC.get()
