"""Image folders for the tests: small ImageNet-layout trees built from real photos and
generated images (the session fixtures in conftest.py call these)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_CLASSES = ("cat", "cup", "rocket")
CORRUPT_KEY = "cup/zz_corrupt.jpg"


def photo(name: str) -> Image.Image:
    """A scikit-image sample photo (e.g. "chelsea", "coffee") as RGB."""
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
    _shrink(photo("chelsea"), 48).save(root / "cat" / "chelsea.jpg", quality=92)
    _shrink(photo("chelsea"), 32).convert("L").save(root / "cat" / "chelsea_gray.png")
    _generated(rng, 40, 56).save(root / "cat" / "gen_a.png")
    _generated(rng, 64, 36).save(root / "cat" / "gen_b.jpg", quality=90)
    _shrink(photo("coffee"), 44).save(root / "cup" / "coffee.jpg", quality=92)
    _shrink(photo("coffee"), 36).convert("CMYK").save(root / "cup" / "coffee_cmyk.jpg", quality=95)
    _generated(rng, 50, 50).quantize(colors=32).save(root / "cup" / "gen_palette.png")
    rgba = _generated(rng, 30, 45).convert("RGBA")
    alpha = np.full((30, 45), 255, np.uint8)
    alpha[:, :10] = 0  # a transparent band
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "cup" / "gen_rgba.png")
    _shrink(photo("rocket"), 40).save(root / "rocket" / "rocket.jpg", quality=92)
    _shrink(photo("astronaut"), 28).save(root / "rocket" / "astronaut.png")
    _generated(rng, 72, 28).save(root / "rocket" / "gen_c.png")
    _generated(rng, 33, 47).save(root / "rocket" / "gen_d.bmp")
    if corrupt:
        (root / CORRUPT_KEY).write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG " + bytes(range(64)))
    return root
