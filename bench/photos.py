"""ImageNet-like JPEG folders for the benchmarks: crops of real photos, about 500x375, quality 90.

The photos are scikit-image's (`skimage.data`: chelsea, coffee, astronaut, rocket, ...),
real camera images with real JPEG statistics; each file is a random crop of one,
resized to 500x375 (70%) or 375x500, the typical ImageNet training image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "hubble_deep_field")


def make_folder(
    root: Path, n: int, classes: int = 10, seed: int = 0, size: tuple[int, int] = (500, 375)
) -> Path:
    """n JPEGs (quality 90) cut at random from real photos and resized to `size` (w, h) in
    70% of cases, its transpose otherwise (default about 500x375)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        try:
            photos.append(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
        except Exception:  # noqa: BLE001 - a photo that needs a download is simply skipped
            continue
    for c in range(classes):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out_w, out_h = size if rng.random() < 0.7 else size[::-1]
        img = photo.crop((left, top, left + cw, top + ch)).resize((out_w, out_h), Image.BILINEAR)
        img.save(root / f"class_{i % classes:02d}" / f"img_{i:06d}.jpg", quality=90)
    return root
