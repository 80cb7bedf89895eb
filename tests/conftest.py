"""Shared test fixtures: small ImageNet-layout folders built from real photos and generated images.

Fixtures are session-scoped and read-only: copy a folder before changing it.
- `tiny_imagefolder`: 3 classes x 4 images (12), small sides (28-72 px), all decodable,
  among them one grayscale PNG, one CMYK JPEG, one palette PNG and one RGBA PNG.
- `tiny_imagefolder_corrupt`: the same plus `cup/zz_corrupt.jpg`, a file that is no image.
- `real_photos`: full-size scikit-image photos (cat, coffee, rocket, astronaut), one class each.
- `wnid_photos`: a 3-class ImageNet subset: real photos in folders named by the ImageNet wnid of
  their class (`imagenet_subset.WNID_INDEX`: wnid -> index in the standard 1000-class order),
  two images each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_CLASSES = ("cat", "cup", "rocket")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU (skipped without one; bench/gpu.sh runs them)"
    )
CORRUPT_KEY = "cup/zz_corrupt.jpg"


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _generated(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    # Smooth colour gradients plus noise: content varies across the image so crops differ.
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, size=3)
    freq = rng.uniform(0.05, 0.3, size=3)
    channels = [127 + 100 * np.sin(freq[c] * (xx + 0.7 * yy) + phase[c]) for c in range(3)]
    arr = np.stack(channels, axis=-1) + rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _shrink(img: Image.Image, short_side: int) -> Image.Image:
    w, h = img.size
    scale = short_side / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def build_tiny_imagefolder(root: Path, corrupt: bool = False) -> Path:
    """Write the tiny folder under `root` and return it (see the module docstring)."""
    rng = np.random.default_rng(1234)
    for name in TINY_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    _shrink(_photo("chelsea"), 48).save(root / "cat" / "chelsea.jpg", quality=92)
    _shrink(_photo("chelsea"), 32).convert("L").save(root / "cat" / "chelsea_gray.png")
    _generated(rng, 40, 56).save(root / "cat" / "gen_a.png")
    _generated(rng, 64, 36).save(root / "cat" / "gen_b.jpg", quality=90)
    _shrink(_photo("coffee"), 44).save(root / "cup" / "coffee.jpg", quality=92)
    _shrink(_photo("coffee"), 36).convert("CMYK").save(root / "cup" / "coffee_cmyk.jpg", quality=95)
    _generated(rng, 50, 50).quantize(colors=32).save(root / "cup" / "gen_palette.png")
    rgba = _generated(rng, 30, 45).convert("RGBA")
    alpha = np.full((30, 45), 255, np.uint8)
    alpha[:, :10] = 0  # a transparent band
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "cup" / "gen_rgba.png")
    _shrink(_photo("rocket"), 40).save(root / "rocket" / "rocket.jpg", quality=92)
    _shrink(_photo("astronaut"), 28).save(root / "rocket" / "astronaut.png")
    _generated(rng, 72, 28).save(root / "rocket" / "gen_c.png")
    _generated(rng, 33, 47).save(root / "rocket" / "gen_d.bmp")
    if corrupt:
        (root / CORRUPT_KEY).write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG " + bytes(range(64)))
    return root


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 small decodable images in 3 classes (cat, cup, rocket); see the module docstring."""
    return build_tiny_imagefolder(tmp_path_factory.mktemp("tiny_imagefolder"))


@pytest.fixture(scope="session")
def tiny_imagefolder_corrupt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_imagefolder` plus one undecodable file at `CORRUPT_KEY` (13 files)."""
    return build_tiny_imagefolder(tmp_path_factory.mktemp("tiny_imagefolder_corrupt"), corrupt=True)


@pytest.fixture(scope="session")
def real_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full-size real photos, one per class folder: astronaut, cat, coffee, rocket."""
    root = tmp_path_factory.mktemp("real_photos")
    for folder, name in (
        ("astronaut", "astronaut"),
        ("cat", "chelsea"),
        ("coffee", "coffee"),
        ("rocket", "rocket"),
    ):
        (root / folder).mkdir()
        _photo(name).save(root / folder / f"{name}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def wnid_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folders n02123159/ (cat), n07920052/ (coffee), n03773504/ (rocket): each holds its
    photo and a smaller mirrored copy (6 images)."""
    from imagenet_subset import WNID_PHOTO

    root = tmp_path_factory.mktemp("wnid_photos")
    for wnid, name in WNID_PHOTO.items():
        (root / wnid).mkdir()
        photo = _photo(name)
        photo.save(root / wnid / f"{name}.jpg", quality=95)
        small = photo.transpose(Image.FLIP_LEFT_RIGHT).resize(
            (photo.width * 3 // 4, photo.height * 3 // 4)
        )
        small.save(root / wnid / f"{name}_small.jpg", quality=90)
    return root
