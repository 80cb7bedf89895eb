"""Small CNNs for the Fashion-MNIST demo and tests: a ResNet-style teacher and a tiny student."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.act(self.body(x) + self.skip(x))


def small_resnet(num_classes: int = 10, width: int = 16) -> nn.Module:
    """A 3-stage ResNet for 28-32 px images (the demo teacher)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        BasicBlock(width, width),
        BasicBlock(width, 2 * width, stride=2),
        BasicBlock(2 * width, 4 * width, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


def demo_teacher(num_classes: int = 10) -> nn.Module:
    """The demo's teacher: small_resnet at width 32 (about 90% on Fashion-MNIST)."""
    return small_resnet(num_classes, width=32)


def demo_student(num_classes: int = 10) -> nn.Module:
    """The demo's student: tiny_cnn at width 8 (about 4 k parameters)."""
    return tiny_cnn(num_classes, width=8)


def tiny_cnn(num_classes: int = 10, width: int = 4) -> nn.Module:
    """Two conv layers and a linear head (the demo student; deliberately small)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, 1, 1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * width * 16, num_classes),
    )


def seeded_tiny_cnn(num_classes: int = 10, seed: int = 11) -> nn.Module:
    """A tiny CNN with the same weights on every call, in any process (tests, smoke runs).

    Seeds a private generator, so building it leaves the global RNG untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tiny_cnn(num_classes, width=4)
