"""Shared test fixtures: small ImageNet-layout folders built from real photos and generated images.

Fixtures are session-scoped and read-only: copy a folder before changing it. The builders
live in images_testlib.py (import helpers from there, never from a conftest).
- `tiny_imagefolder`: 3 classes x 4 images (12), small sides (28-72 px), all decodable,
  among them one grayscale PNG, one CMYK JPEG, one palette PNG and one RGBA PNG.
- `tiny_imagefolder_corrupt`: the same plus `cup/zz_corrupt.jpg`, a file that is no image.
- `real_photos`: full-size scikit-image photos (cat, coffee, rocket, astronaut), one class each.
- `wnid_photos`: a 3-class ImageNet subset: real photos in folders named by the ImageNet wnid of
  their class (`imagenet_subset.WNID_INDEX`: wnid -> index in the standard 1000-class order),
  two images each.
- `timm_hub`: a local Hugging Face cache of two small random-init timm models and a plain
  checkpoint (`timm_testlib.TimmHub`); `offline_hub` makes it this process's cache, offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from images_testlib import build_tiny_imagefolder, photo
from PIL import Image

# Tests run tiny models: one intra-op thread each (read when torch loads, also by the
# processes tests start). Two threads per process on a busy 2-core machine made the
# training tests 8x slower (oversubscription). Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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
        photo(name).save(root / folder / f"{name}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def wnid_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folders n02123159/ (cat), n07920052/ (coffee), n03773504/ (rocket): each holds its
    photo and a smaller mirrored copy (6 images)."""
    from imagenet_subset import WNID_PHOTO

    root = tmp_path_factory.mktemp("wnid_photos")
    for wnid, name in WNID_PHOTO.items():
        (root / wnid).mkdir()
        image = photo(name)
        image.save(root / wnid / f"{name}.jpg", quality=95)
        small = image.transpose(Image.FLIP_LEFT_RIGHT).resize(
            (image.width * 3 // 4, image.height * 3 // 4)
        )
        small.save(root / wnid / f"{name}_small.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def timm_hub(tmp_path_factory: pytest.TempPathFactory):
    """`timm_testlib.TimmHub`: a local Hugging Face cache of two small random-init timm
    models (a ViT and a ResNet) and a plain checkpoint (`make test` installs the timm extra)."""
    from timm_testlib import TimmHub

    return TimmHub(tmp_path_factory.mktemp("timm_hub") / "hf_home")


@pytest.fixture
def offline_hub(timm_hub, monkeypatch: pytest.MonkeyPatch):
    """`timm_hub` as this process's Hugging Face cache, offline: HF_HUB_OFFLINE=1 and every
    socket connection refused, so a download attempt would fail the test."""
    import socket

    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(timm_hub.cache))
    monkeypatch.setenv("HF_HOME", str(timm_hub.home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return timm_hub
