"""Views: crop box and flip drawn from (seed, view, index) alone, and their replay at any size.

The teacher pass and the student both call `replay_view`, so a student sees exactly the
pixels the teacher saw when it asks for the teacher's size, and the same box and flip at
its own size otherwise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from pld_pipeline.configs.base import DEFAULT_RATIO, DEFAULT_SCALE
from pld_pipeline.errors import ConfigError, ViewError
from pld_pipeline.uint8_resize import FILTERS as EXACT_FILTERS
from pld_pipeline.uint8_resize import CropBatch, resize_crops_exact

Crop = tuple[int, int, int, int]  # top, left, height, width in source pixels

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "nearest-exact": InterpolationMode.NEAREST_EXACT,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
VIEW_MODES = ("eval", "replay")


def view_rng(seed: int, v: int, i: int) -> np.random.Generator:
    """The only source of randomness for (view v, sample i): independent of order and workers."""
    if seed < 0 or v < 0 or i < 0:
        raise ConfigError(
            f"View seed, view and index must be >= 0, got seed={seed}, view={v}, index={i}."
        )
    return np.random.default_rng([int(seed), int(v), int(i)])


def sample_view(
    mode: str,
    seed: int,
    v: int,
    i: int,
    height: int,
    width: int,
    scale: Sequence[float] = DEFAULT_SCALE,
    ratio: Sequence[float] = DEFAULT_RATIO,
    crop_pct: float = 0.875,
) -> tuple[Crop, bool]:
    """The crop box and flip of view `v` of sample `i` (an image of `height` x `width`).

    `eval`: a centered square of side round(min(h, w) * crop_pct), no flip (resize + center
    crop expressed as a box in source pixels). `replay`: RandomResizedCrop's box, drawn
    exactly as torchvision's `RandomResizedCrop.get_params` (10 tries of an area fraction
    in `scale` and a log-uniform aspect ratio in `ratio`, then a center-crop fallback),
    and a horizontal flip with probability 0.5, all from `view_rng(seed, v, i)`.

    Returns:
        ((top, left, h, w), flip).

    Raises:
        ConfigError: unknown mode, negative seed/view/index, or empty image.
    """
    if height < 1 or width < 1:
        raise ConfigError(f"Image size must be positive, got {height}x{width} (sample {i}).")
    if mode == "eval":
        side = max(1, min(height, width, round(min(height, width) * crop_pct)))
        top = int(round((height - side) / 2.0))
        left = int(round((width - side) / 2.0))
        return (top, left, side, side), False
    if mode != "replay":
        raise ConfigError(f"Unknown view mode {mode!r}; use one of {VIEW_MODES}.")
    rng = view_rng(seed, v, i)
    flip = bool(rng.random() < 0.5)  # drawn first so it does not depend on the crop's tries
    return _random_resized_crop(rng, height, width, scale, ratio), flip


def _random_resized_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
) -> Crop:
    # Same algorithm as torchvision.transforms.RandomResizedCrop.get_params, numpy RNG.
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision InterpolationMode for a name ("bilinear", "bicubic", "nearest", ...)."""
    try:
        return INTERPOLATIONS[name.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(
            f"Unknown interpolation {name!r}; use one of {sorted(INTERPOLATIONS)}."
        ) from None


def replay_view(
    image: Image.Image | torch.Tensor,
    crop: Sequence[int],
    flip: bool,
    size: int,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Apply a stored view: crop the source box, resize to `size` x `size`, then flip.

    The one function the teacher pass and the students use, so equal (image, crop, flip,
    size, interpolation) give equal pixels. Bilinear and bicubic call torch's uint8
    antialiased kernel directly, on every CPU: torchvision's `resize` takes a float path
    instead on CPUs without AVX2 (other pixels, by a level), and costs about a third more
    per view in dispatch and copies. The nearest modes only pick pixels.

    Args:
        image: RGB PIL image, or uint8 tensor [3, H, W].
        crop: (top, left, h, w) in source pixels, inside the image.
        flip: mirror left-right after the resize.
        size: output side in pixels.
        interpolation: "bilinear", "bicubic", "nearest" or "nearest-exact".

    Returns:
        uint8 tensor [3, size, size].

    Raises:
        ViewError: the box is empty or outside the image (e.g. a cache made from other files).
    """
    pixels = TF.pil_to_tensor(image) if isinstance(image, Image.Image) else image
    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ViewError(
            f"replay_view needs an RGB PIL image or a uint8 tensor [3, H, W], got "
            f"{pixels.dtype} {tuple(pixels.shape)}; decode with ImageFolderDataset.load_rgb."
        )
    top, left, h, w = check_crop(crop, pixels.shape[1], pixels.shape[2], size)
    mode = interpolation_mode(interpolation)
    out = pixels[:, top : top + h, left : left + w]
    if (h, w) == (size, size):
        out = out.contiguous()
    elif interpolation in EXACT_FILTERS:
        out = F.interpolate(
            out[None], size=(size, size), mode=interpolation, antialias=True, align_corners=False
        )[0]
    else:
        out = TF.resize(out, [size, size], interpolation=mode, antialias=False)
    return TF.horizontal_flip(out) if flip else out


def check_crop(crop: Sequence[int], height: int, width: int, size: int) -> Crop:
    """The crop box as ints, checked against the image and the output size.

    Raises:
        ViewError: the box is empty or outside the image, or size < 1.
    """
    top, left, h, w = (int(c) for c in crop)
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
        raise ViewError(
            f"Crop box (top={top}, left={left}, h={h}, w={w}) does not fit an image of "
            f"{height}x{width}; the view was recorded for another image (check the cache's "
            "dataset fingerprint)."
        )
    if size < 1:
        raise ViewError(f"Output size must be >= 1, got {size}.")
    return top, left, h, w


def replay_views_on_device(
    images: Sequence[torch.Tensor],
    owner: Sequence[int],
    crops: Sequence[Sequence[int]],
    flips: Sequence[bool],
    size: int,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """`replay_view` for many views of uint8 images on any device: the same box checks,
    the same pixels, in a few batched kernels (what GPU decoding uses).

    torch has no uint8 antialiased kernel on GPUs, and its float kernel differs from the
    CPU's uint8 one by rounding (up to 2 levels for bicubic). So bilinear and bicubic run
    the CPU kernel's integer arithmetic as exact float64 matrix products
    (`uint8_resize.resize_crops_exact`); the nearest modes, which only pick pixels, run
    per view. Tests compare every mode with `replay_view` on the CPU.

    Args:
        images: uint8 tensors [3, H, W], on one device.
        owner: for each view, the index of its image in `images`.
        crops, flips: each view's (top, left, h, w) box and flip.
        size, interpolation: as `replay_view`.

    Returns:
        uint8 tensor [N, 3, size, size] on the images' device.

    Raises:
        ViewError: an image that is not uint8 [3, H, W], or a box that does not fit its image.
    """
    for image in images:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ViewError(
                f"replay_views_on_device needs uint8 tensors [3, H, W], got {image.dtype} "
                f"{tuple(image.shape)}."
            )
    boxes = [check_crop(c, *images[i].shape[1:], size) for i, c in zip(owner, crops, strict=True)]
    if interpolation in EXACT_FILTERS:
        batch = CropBatch(
            np.asarray(owner, dtype=np.int64).reshape(-1), np.array(boxes).reshape(-1, 4)
        )
        out = resize_crops_exact(images, batch, (size, size), interpolation)
    else:
        mode = interpolation_mode(interpolation)
        picked = []
        for i, (top, left, h, w) in zip(owner, boxes, strict=True):
            view = images[i][:, top : top + h, left : left + w].float()
            picked.append(TF.resize(view, [size, size], interpolation=mode, antialias=False))
        out = torch.stack(picked).round_().to(torch.uint8)  # picked pixels: whole levels
    mirror = torch.tensor(list(flips), dtype=torch.bool).to(out.device, non_blocking=True)
    return torch.where(mirror.view(-1, 1, 1, 1), out.flip(-1), out)


def replay_view_on_device(
    image: torch.Tensor,
    crop: Sequence[int],
    flip: bool,
    size: int,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """One view of `replay_views_on_device`: uint8 [3, size, size] on the image's device."""
    return replay_views_on_device([image], [0], [crop], [flip], size, interpolation)[0]


def normalize_batch(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 images [B, 3, S, S] -> float32 (x / 255 - mean) / std on `device`.

    The conversion runs on the target device (after moving the compact uint8 batch),
    so on CUDA the host copies 4x fewer bytes and the CPU does no float work.

    Returns:
        float32 tensor [B, 3, S, S], channels_last memory format when asked.
    """
    x = images.to(device, non_blocking=True) if device is not None else images
    shift, scale = _affine(tuple(mean), tuple(std), x.device)
    # (x/255 - mean)/std == x * (1/(255 std)) - mean/std: one multiply-add per pixel, read
    # straight from uint8 (type promotion), so no separate float copy of the batch is made.
    x = torch.addcmul(shift, x, scale)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@functools.lru_cache(maxsize=32)
def _affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch would copy from pageable host memory,
    # which on CUDA waits for all queued work and so stalls the pipeline every batch.
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    shift = (-mean_t / std_t).to(device=device, dtype=torch.float32)
    scale = (1.0 / (255.0 * std_t)).to(device=device, dtype=torch.float32)
    return shift, scale
