"""A teacher whose every cached number is exact, so a cache's bytes can be pinned by a hash.

The images are single-colour BMP files (no compression, so file sizes and pixels are the
same on every machine), and the teacher reads the red value of one pixel, which a crop
and resize of a single-colour image keeps within a level. It outputs 0 for the class that
colour encodes and -1000 - j for every other class j. Every log-probability, logsumexp and
top-K entry is then exact in float32 whatever the CPU's vector width or summation order:
exp(-1000 / T) underflows to 0 next to exp(0) = 1, so log-softmax returns the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

RED_BASE, RED_STEP = 30, 60  # class c is red = 30 + 60 c: far apart against a level's error
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class ColourTeacher(nn.Module):
    """Logits 0 for the class the top-left pixel's red value encodes, -1000 - j elsewhere."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0, 0, 0] * STD[0] + MEAN[0]) * 255.0  # undo the normalisation
        cls = torch.round((red - RED_BASE) / RED_STEP).long().clamp(0, self.num_classes - 1)
        others = -1000.0 - torch.arange(self.num_classes, dtype=x.dtype, device=x.device)
        logits = others.expand(x.shape[0], -1).clone()
        logits[torch.arange(x.shape[0]), cls] = 0.0
        return logits


def colour_teacher(num_classes: int) -> nn.Module:
    return ColourTeacher(num_classes)


def build_colour_folder(root: Path, num_classes: int = 4, per_class: int = 5) -> Path:
    """root/class_c/img_i.bmp: one colour per class, sizes that differ per image."""
    for c in range(num_classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            height, width = 20 + 7 * i + c, 24 + 5 * ((i + c) % 4)
            pixels = np.empty((height, width, 3), np.uint8)
            pixels[...] = (RED_BASE + RED_STEP * c, 90 + 10 * i, 200 - 30 * c)
            Image.fromarray(pixels, "RGB").save(folder / f"img_{i}.bmp")
    return root
