"""A teacher slow enough to be killed mid-pass (imported as `slow_models:slow_tiny_cnn`)."""

from __future__ import annotations

import time

from torch import nn

from pld_pipeline.demo.small_models import seeded_tiny_cnn


class Slow(nn.Module):
    def __init__(self, inner: nn.Module, seconds: float) -> None:
        super().__init__()
        self.inner = inner
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.inner(x)


def slow_tiny_cnn(num_classes: int = 10) -> nn.Module:
    """seeded_tiny_cnn that sleeps 0.25 s per forward."""
    return Slow(seeded_tiny_cnn(num_classes), 0.25)


BUILT: list[int] = []


def counted_tiny_cnn(num_classes: int = 10) -> nn.Module:
    """seeded_tiny_cnn that records each construction in BUILT (proves who builds it)."""
    BUILT.append(num_classes)
    return seeded_tiny_cnn(num_classes)


def slow_tiny_student(num_classes: int = 10) -> nn.Module:
    """tiny_cnn that sleeps 0.2 s per forward (a student run long enough to time out)."""
    from pld_pipeline.demo.small_models import tiny_cnn

    return Slow(tiny_cnn(num_classes), 0.2)
