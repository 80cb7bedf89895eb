"""Tiny models the training tests name as `pld_test_models:<factory>` (this folder is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn


def dropout_cnn(num_classes: int = 6) -> nn.Module:
    """A tiny CNN with dropout, so training consumes the global torch RNG (resume tests)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(32, num_classes),
    )


def fixed_teacher(num_classes: int = 6) -> nn.Module:
    """A small CNN whose weights are the same on every call (seeded without touching the global RNG)."""
    with torch.random.fork_rng():
        torch.manual_seed(11)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, num_classes),
        )
    return model.eval()


def raising_factory(num_classes: int = 6) -> nn.Module:
    """Fails when called: proves a code path never builds the model."""
    raise RuntimeError("this model must not be constructed")


# Class order of the `color_folder` fixture (sorted folder names) -> the RGB channel that
# dominates that class's images.
COLOR_CHANNEL = {"blue": 2, "green": 1, "red": 0}


def color_teacher(num_classes: int = 3) -> nn.Module:
    """A teacher that is right on its own classes (blue, green, red: the sorted colour folders):
    logit c = 10 x the mean of the channel that dominates class c."""
    if num_classes != 3:
        raise ValueError(f"color_teacher knows 3 classes, got num_classes={num_classes}")
    linear = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        linear.weight.zero_()
        for c, channel in enumerate(COLOR_CHANNEL.values()):
            linear.weight[c, channel] = 10.0
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear).eval()
