"""ImageNet-layout listing (against torchvision's ImageFolder), keys, fingerprint, RGB decoding."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torchvision
from images_testlib import CORRUPT_KEY, TINY_CLASSES
from PIL import Image

import storage
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import BadImageError, DatasetError, DatasetNotFoundError
from pld_pipeline.rgb import load_rgb, to_rgb


def test_listing_matches_torchvision_imagefolder(tiny_imagefolder: Path) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    reference = torchvision.datasets.ImageFolder(str(tiny_imagefolder))
    expected = sorted(
        (Path(os.path.relpath(path, tiny_imagefolder)).as_posix(), label)
        for path, label in reference.samples
    )
    assert list(zip(data.keys, data.labels.tolist(), strict=True)) == expected
    assert data.classes == reference.classes == list(TINY_CLASSES)
    assert data.keys == sorted(data.keys)
    assert len(data) == 12
    assert data.labels.dtype == np.int32
    assert data.sizes.tolist() == [os.stat(tiny_imagefolder / k).st_size for k in data.keys]


def test_every_mode_decodes_to_rgb(tiny_imagefolder: Path) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    modes = set()
    for i, key in enumerate(data.keys):
        with Image.open(tiny_imagefolder / key) as raw:
            modes.add(raw.mode)
            size = raw.size
        img = data.load_rgb(i)
        assert img.mode == "RGB", key
        assert img.size == size, key
    assert {"L", "CMYK", "P", "RGBA", "RGB"} <= modes
    gray = np.asarray(data.load_rgb(data.keys.index("cat/chelsea_gray.png")))
    assert np.array_equal(gray[..., 0], gray[..., 1])
    assert np.array_equal(gray[..., 1], gray[..., 2])


def test_cmyk_jpeg_keeps_its_colours(tiny_imagefolder: Path) -> None:
    # The CMYK file was made from coffee.jpg's photo at another size: compare mean colours.
    data = ImageFolderDataset(tiny_imagefolder)
    cmyk = np.asarray(data.load_rgb(data.keys.index("cup/coffee_cmyk.jpg")), dtype=float)
    rgb = np.asarray(data.load_rgb(data.keys.index("cup/coffee.jpg")), dtype=float)
    assert np.abs(cmyk.mean(axis=(0, 1)) - rgb.mean(axis=(0, 1))).max() < 8


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, :, 3] = 255  # opaque row keeps its colour
    rgba[1, 0, 3] = 0  # transparent -> white
    rgba[1, 1:, 3] = 128  # half -> about halfway to white
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA"))).astype(int)
    assert out[0].tolist() == [[10, 20, 30]] * 3
    assert out[1, 0].tolist() == [255, 255, 255]
    expected = np.round(np.array([10, 20, 30]) * 128 / 255 + 255 * 127 / 255)
    assert np.abs(out[1, 1] - expected).max() <= 1


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_corrupt_and_truncated_files_name_their_path(
    tiny_imagefolder_corrupt: Path, tmp_path: Path
) -> None:
    data = ImageFolderDataset(tiny_imagefolder_corrupt)
    with pytest.raises(BadImageError, match="zz_corrupt.jpg"):
        data.load_rgb(data.keys.index(CORRUPT_KEY))
    whole = (tiny_imagefolder_corrupt / "cat" / "chelsea.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadImageError, match="cut.jpg") as info:
        load_rgb(tmp_path / "cut.jpg")
    assert isinstance(info.value, OSError)


def test_imagenet_root_with_split(tmp_path: Path, tiny_imagefolder: Path) -> None:
    for split in ("train", "val"):
        shutil.copytree(tiny_imagefolder, tmp_path / split)
    shutil.rmtree(tmp_path / "val" / "rocket")
    val = ImageFolderDataset(tmp_path, split="val")
    assert val.root == tmp_path / "val"
    assert val.classes == ["cat", "cup"]
    assert val.keys[0] == "cat/chelsea.jpg"
    with pytest.raises(DatasetNotFoundError, match="test"):
        ImageFolderDataset(tmp_path, split="test")
    # Pinned classes keep the full label space when a split lacks some classes.
    pinned = ImageFolderDataset(tmp_path, split="val", classes=["rocket", "cup", "cat"])
    assert pinned.labels[pinned.keys.index("cat/chelsea.jpg")] == 2
    with pytest.raises(DatasetError, match="not in the given class list"):
        ImageFolderDataset(tmp_path, split="val", classes=["cat"])


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        ImageFolderDataset(tmp_path / "missing")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(DatasetError, match="No class folders"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="holds no images"):
        ImageFolderDataset(tmp_path)
    data = ImageFolderDataset(tmp_path, allow_empty=True)
    assert data.keys == ["a/x.png"]
    assert data.classes == ["a", "b"]


def test_fingerprint_is_storage_fingerprint_and_tracks_files(
    tmp_path: Path, tiny_imagefolder: Path
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tiny_imagefolder, root)
    data = ImageFolderDataset(root)
    first = data.fingerprint()
    assert first == storage.fingerprint(
        list(reversed(data.keys)), list(reversed(data.sizes.tolist()))
    )
    assert ImageFolderDataset(root).fingerprint() == first
    with open(root / "cat" / "gen_a.png", "ab") as handle:
        handle.write(b"\0")
    assert ImageFolderDataset(root).fingerprint() != first
