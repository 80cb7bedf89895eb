"""torch's CPU uint8 antialiased resize, as exact integer arithmetic on any device.

`views.replay_view` resizes uint8 images with torch's CPU kernel (the one the teacher pass
ran). That kernel is Pillow's algorithm: per axis, filter weights computed in float64,
normalised, then rounded to int16 at a precision chosen from the axis's largest weight;
each output is an integer dot product plus half a unit, shifted down and clipped to
0..255; the horizontal pass runs first and is rounded to uint8 before the vertical one.
On a GPU torch has no uint8 kernel, and its float kernel differs by rounding (up to 2
levels for bicubic, whose overshoot the uint8 kernel clips between passes).

Here the same integer weights are applied as two float64 matrix products. Every product
and sum is an integer far below 2**53, so float64 is exact in any summation order and
the result equals the CPU kernel's on every device (tests compare them on the CPU over
random crops, both directions of scaling and both filters).

The weights depend only on (input size, output size, filter), so they are built once per
triple (`axis_taps`), kept on the device, and expanded to a dense matrix per use.
Source: `HelperInterpBase::_compute_indices_min_size_weights_aa` and
`_compute_index_ranges_int16_weights` in ATen's `native/cpu/UpSampleKernel.cpp`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

FILTERS = ("bilinear", "bicubic")
_INTERP_SIZE = {"bilinear": 2, "bicubic": 4}
_CUBIC_A = -0.5  # Keys' cubic, as Pillow and torch use it


class AxisTaps(NamedTuple):
    """One axis of the resize: output i reads inputs first[i] + 0..taps-1.

    Attributes:
        first: int64 [out] first input index per output.
        weights: int64 [out, taps] fixed-point weights (zero past each output's support).
        precision: weights are real weights times 2**precision.
    """

    first: np.ndarray
    weights: np.ndarray
    precision: int


def _filter(x: np.ndarray, mode: str) -> np.ndarray:
    """The antialias filter at x, in the kernel's operation order (float64)."""
    x = np.abs(x)
    if mode == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = _CUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=4096)
def axis_taps(in_size: int, out_size: int, mode: str) -> AxisTaps:
    """The int16 weights torch's uint8 kernel uses to resize one axis (antialiased).

    Raises:
        ValueError: a filter other than bilinear or bicubic, or a size < 1.
    """
    if mode not in _INTERP_SIZE:
        raise ValueError(f"Exact uint8 resize supports {FILTERS}, not {mode!r}.")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"Sizes must be >= 1, got {in_size} -> {out_size}.")
    scale = in_size / out_size
    support = _INTERP_SIZE[mode] * 0.5 * (scale if scale >= 1.0 else 1.0)
    taps = math.ceil(support) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    # C++ casts truncate toward zero; max(., 0) makes that floor where it matters.
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    last = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    count = np.clip(last - first, 0, taps)
    j = np.arange(taps)
    inside = j[None, :] < count[:, None]
    real = np.where(inside, _filter((j[None, :] + first[:, None] - center[:, None] + 0.5) * invscale, mode), 0.0)  # fmt: skip
    total = np.zeros(out_size)
    for k in range(taps):  # summed left to right, as the kernel does
        total = total + real[:, k]
    nonzero = total != 0.0
    real = np.where(nonzero[:, None], real / np.where(nonzero, total, 1.0)[:, None], 0.0)
    wt_max = float(np.max(real, initial=0.0))
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = real * (1 << precision)
    weights = np.where(scaled < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled))
    return AxisTaps(first, weights.astype(np.int64), precision)


def taps_matrix(in_size: int, out_size: int, mode: str, device: torch.device) -> torch.Tensor:
    """The axis's weights as a dense float64 [out, in] matrix on `device`."""
    index, weights = _device_taps(in_size, out_size, mode, torch.device(device))
    dense = torch.zeros(out_size, in_size, dtype=torch.float64, device=device)
    # Past an output's support the weights are 0, so clipped indices add nothing.
    return dense.scatter_add_(1, index, weights)


@functools.lru_cache(maxsize=2048)
def _device_taps(
    in_size: int, out_size: int, mode: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # Kept on the device (tens of KB each), so a view costs no host-to-device copy.
    taps = axis_taps(in_size, out_size, mode)
    width = taps.weights.shape[1]
    index = np.minimum(taps.first[:, None] + np.arange(width), in_size - 1)
    return (
        torch.from_numpy(index).to(device),
        torch.from_numpy(taps.weights.astype(np.float64)).to(device),
    )


def _round_shift(acc: torch.Tensor, precision: int) -> torch.Tensor:
    """(acc + half) >> precision, clipped to 0..255: the kernel's rounding, exact in float64."""
    half = float(1 << (precision - 1)) if precision > 0 else 0.0
    return torch.floor_((acc + half) / float(1 << precision)).clamp_(0.0, 255.0)


def resize_uint8_exact(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of a [C, H, W] image holding 0..255 values (any dtype, any device)
    to `size` (h, w), giving the pixels torch's CPU uint8 kernel gives.

    Returns:
        uint8 tensor [C, h, w] on the image's device.
    """
    out = image.to(torch.float64)
    in_h, in_w = out.shape[-2:]
    out_h, out_w = size
    if in_w != out_w:  # horizontal pass first, rounded to uint8 values
        matrix = taps_matrix(in_w, out_w, mode, out.device)
        out = _round_shift(out @ matrix.T, axis_taps(in_w, out_w, mode).precision)
    if in_h != out_h:
        matrix = taps_matrix(in_h, out_h, mode, out.device)
        out = _round_shift(matrix @ out, axis_taps(in_h, out_h, mode).precision)
    return out.to(torch.uint8)
