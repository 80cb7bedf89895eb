"""The `wnid_photos` fixture's classes: three ImageNet-1k classes of skimage photos.

Indices are positions in the standard ImageNet-1k order (sorted wnids) that torchvision
and timm weights use: 282 tiger cat, 967 espresso, 657 missile.
"""

from __future__ import annotations

WNID_INDEX = {"n02123159": 282, "n07920052": 967, "n03773504": 657}
WNID_PHOTO = {"n02123159": "chelsea", "n07920052": "coffee", "n03773504": "rocket"}


def imagenet_class_list() -> list[str]:
    """1000 names in teacher index order: the three wnids at their indices, placeholders elsewhere."""
    names = [f"class_{i:04d}" for i in range(1000)]
    for wnid, index in WNID_INDEX.items():
        names[index] = wnid
    return names
