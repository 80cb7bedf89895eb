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
triple (`axis_taps`, cached). `resize_crops_exact` batches many crops of many images: each
crop's weights are placed at its offset in a dense matrix per image and view, so each
pass is one batched matrix product.
Source: `HelperInterpBase::_compute_indices_min_size_weights_aa` and
`_compute_index_ranges_int16_weights` in ATen's `native/cpu/UpSampleKernel.cpp`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
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


def pass_taps(in_size: int, out_size: int, mode: str) -> AxisTaps:
    """`axis_taps`, or the identity when the size is unchanged (the kernel skips that pass:
    weight 1 at precision 0 leaves every value as it is)."""
    if in_size == out_size:
        return AxisTaps(np.arange(out_size), np.ones((out_size, 1), dtype=np.int64), 0)
    return axis_taps(in_size, out_size, mode)


class CropBatch(NamedTuple):
    """Crops to resize, all from a list of images: view n is image owner[n]'s box crops[n]."""

    owner: np.ndarray  # int64 [N]
    crops: np.ndarray  # int64 [N, 4] top, left, h, w


def resize_crops_exact(
    images: Sequence[torch.Tensor],
    batch: CropBatch,
    size: tuple[int, int],
    mode: str,
    max_chunk_bytes: int = 512 << 20,
) -> torch.Tensor:
    """Resize every crop of `batch` to `size` (h, w) as torch's CPU uint8 kernel would.

    Batched for the GPU: images are stacked (zero-padded) a few at a time, each image's
    crops get their weight matrices placed at the crop's offset, and each pass is one
    batched matrix product, so a batch costs a few dozen kernel launches however many
    views it has. Memory per chunk of images is held under `max_chunk_bytes`.

    Args:
        images: [C, H, W] tensors holding 0..255 values, on one device.
        batch: which image and box each output view comes from (boxes inside the image).
        size: output (h, w).
        mode: "bilinear" or "bicubic".

    Returns:
        uint8 tensor [N, C, h, w] on the images' device, in batch order.
    """
    device, channels = images[0].device, images[0].shape[0]
    out = torch.empty(len(batch.owner), channels, *size, dtype=torch.uint8, device=device)
    for chunk in _image_chunks(images, batch, size, max_chunk_bytes):
        first, last = chunk[0], chunk[-1]
        views = np.flatnonzero((batch.owner >= first) & (batch.owner <= last))
        if len(views):
            part = CropBatch(batch.owner[views] - first, batch.crops[views])
            out[torch.from_numpy(views).to(device)] = _resize_chunk(
                images[first : last + 1], part, size, mode
            )
    return out


def _image_chunks(
    images: Sequence[torch.Tensor], batch: CropBatch, size: tuple[int, int], max_bytes: int
) -> list[list[int]]:
    """Consecutive groups of image indices whose float64 work fits in `max_bytes`."""
    views = np.bincount(batch.owner, minlength=len(images))
    chunks: list[list[int]] = [[]]
    used = 0
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        cost = 8 * (
            image.shape[0] * h * (w + 2 * views[i] * size[1]) + views[i] * sum(size) * (h + w)
        )
        if chunks[-1] and used + cost > max_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += cost
    return chunks


def _resize_chunk(
    images: Sequence[torch.Tensor], batch: CropBatch, size: tuple[int, int], mode: str
) -> torch.Tensor:
    """`resize_crops_exact` for a few images at once (batch.owner indexes `images`)."""
    device, channels = images[0].device, images[0].shape[0]
    n_img, (out_h, out_w) = len(images), size
    h_max = max(int(im.shape[-2]) for im in images)
    w_max = max(int(im.shape[-1]) for im in images)
    v_max = int(np.bincount(batch.owner, minlength=n_img).max())
    stacked = torch.zeros(n_img, channels, h_max, w_max, dtype=torch.float64, device=device)
    for s, im in enumerate(images):
        stacked[s, :, : im.shape[-2], : im.shape[-1]] = im
    rows = np.zeros(len(batch.owner), dtype=np.int64)  # each view's (image, slot) row
    horiz = _PassArrays(n_img, v_max, out_w)
    vert = _PassArrays(n_img, v_max, out_h)
    filled = np.zeros(n_img, dtype=np.int64)
    for n, (s, (top, left, h, w)) in enumerate(zip(batch.owner, batch.crops.tolist(), strict=True)):
        v, filled[s] = filled[s], filled[s] + 1
        rows[n] = s * v_max + v
        horiz.put(s, v, pass_taps(w, out_w, mode), left, left + w - 1)
        vert.put(s, v, pass_taps(h, out_h, mode), top, top + h - 1)
    # Horizontal: [I, C, H, W] @ [I, W, V*out_w] -> [I, C, H, V*out_w], rounded per view.
    wx = horiz.dense(w_max, device).transpose(1, 2)
    t = _round_shift(stacked @ wx[:, None], *horiz.shift(device, (n_img, 1, 1, v_max * out_w)))
    t = t.view(n_img, channels, h_max, v_max, out_w).permute(0, 3, 1, 2, 4)  # [I, V, C, H, w]
    # Vertical: [I, V, 1, out_h, H] @ [I, V, C, H, out_w] -> [I, V, C, out_h, out_w].
    wy = vert.dense(h_max, device).view(n_img, v_max, 1, out_h, h_max)
    o = _round_shift(wy @ t, *vert.shift(device, (n_img, v_max, 1, 1, 1)))
    o = o.reshape(n_img * v_max, channels, out_h, out_w)
    return o[torch.from_numpy(rows).to(device)].to(torch.uint8)


class _PassArrays:
    """One pass's weights for a chunk, gathered on the host as (column, weight) per output
    row, then scattered into dense [I, V*out, in] matrices on the device in one call."""

    def __init__(self, n_img: int, v_max: int, out: int) -> None:
        self.out, self.v_max = out, v_max
        self.items: list[tuple[int, int, AxisTaps, int, int]] = []
        self.precision = np.zeros((n_img, v_max), dtype=np.int64)

    def put(self, s: int, v: int, taps: AxisTaps, start: int, last: int) -> None:
        self.items.append((s, v, taps, start, last))
        self.precision[s, v] = taps.precision

    def dense(self, in_max: int, device: torch.device) -> torch.Tensor:
        n_img, v_max = self.precision.shape
        k_max = max(t.weights.shape[1] for _, _, t, _, _ in self.items)
        index = np.zeros((n_img, v_max, self.out, k_max), dtype=np.int64)
        weight = np.zeros((n_img, v_max, self.out, k_max), dtype=np.float64)
        for s, v, taps, start, last in self.items:
            k = taps.weights.shape[1]
            # Columns past an output's support carry weight 0; clipped into the crop.
            index[s, v, :, :k] = np.minimum(start + taps.first[:, None] + np.arange(k), last)
            weight[s, v, :, :k] = taps.weights
        dense = torch.zeros(n_img, v_max * self.out, in_max, dtype=torch.float64, device=device)
        shape = (n_img, v_max * self.out, k_max)
        return dense.scatter_add_(
            2,
            torch.from_numpy(index.reshape(shape)).to(device),
            torch.from_numpy(weight.reshape(shape)).to(device),
        )

    def shift(
        self, device: torch.device, shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(half, 2**precision) per output column/view, broadcastable to the pass's output."""
        p = self.precision
        if shape[-1] != 1:  # horizontal: one value per output column
            p = np.repeat(p, self.out, axis=1)
        half = np.where(p > 0, 2.0 ** (p - 1), 0.0).reshape(shape)
        return (
            torch.from_numpy(half).to(device),
            torch.from_numpy(2.0**p).reshape(shape).to(device),
        )


def _round_shift(acc: torch.Tensor, half: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """(acc + half) >> precision, clipped to 0..255: the kernel's rounding, exact in float64."""
    return torch.floor_((acc + half) / unit).clamp_(0.0, 255.0)


def resize_uint8_exact(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of one [C, H, W] image holding 0..255 values (any dtype, any
    device) to `size` (h, w), giving the pixels torch's CPU uint8 kernel gives.

    Returns:
        uint8 tensor [C, h, w] on the image's device.
    """
    h, w = image.shape[-2:]
    whole = CropBatch(np.zeros(1, dtype=np.int64), np.array([[0, 0, h, w]], dtype=np.int64))
    return resize_crops_exact([image], whole, size, mode)[0]
