"""Fashion-MNIST IDX reading and the ImageNet-layout writer (on small IDX files made here)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from pld_pipeline.demo.fashion_mnist import CLASSES, read_idx, write_image_folder
from pld_pipeline.errors import ConfigError


def write_idx(path, array: np.ndarray) -> None:
    """The IDX format by hand: 0, 0, type 0x08 (uint8), ndim, big-endian dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "src"
    folder.mkdir()
    for n, prefix in ((40, "train"), (20, "t10k")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def test_read_idx_roundtrip(source):
    images = read_idx(source / "train-images-idx3-ubyte.gz")
    assert images.shape == (40, 28, 28)
    assert images.dtype == np.uint8
    assert list(read_idx(source / "train-labels-idx1-ubyte.gz")[:12]) == [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # fmt: skip


def test_writes_balanced_png_folders_with_exact_pixels(source, tmp_path):
    out = write_image_folder(tmp_path / "data", "train", per_class=3, seed=1, source=source)
    images = read_idx(source / "train-images-idx3-ubyte.gz")
    files = sorted(out.glob("*/*.png"))
    assert len(files) == 30
    assert {f.parent.name for f in files} == set(CLASSES)
    for f in files:
        index = int(f.stem.split("-")[1])
        assert CLASSES[index % 10] == f.parent.name
        np.testing.assert_array_equal(np.asarray(Image.open(f)), images[index])


def test_rewrite_with_other_settings_is_refused(source, tmp_path):
    write_image_folder(tmp_path / "data", "val", per_class=1, seed=0, source=source)
    before = sorted(p.name for p in (tmp_path / "data" / "val").rglob("*.png"))
    # Same settings: reused as it is.
    write_image_folder(tmp_path / "data", "val", per_class=1, seed=0, source=source)
    with pytest.raises(ConfigError, match="per_class=1 seed=0, not per_class=2 seed=0"):
        write_image_folder(tmp_path / "data", "val", per_class=2, seed=0, source=source)
    assert sorted(p.name for p in (tmp_path / "data" / "val").rglob("*.png")) == before


def test_missing_source_names_the_package(tmp_path):
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        write_image_folder(tmp_path / "data", "train", source=tmp_path / "nowhere")
