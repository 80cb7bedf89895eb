"""The default decoder: torchvision's libjpeg-turbo for JPEGs gives PIL's pixels; PIL for the rest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.decoding import decode_rgb, decode_rgb_bytes, is_jpeg, jpeg_header, read_bytes
from pld_pipeline.errors import BadImageError
from pld_pipeline.rgb import load_rgb

CORRUPT_KEY = "cup/zz_corrupt.jpg"  # written by tests/conftest.py


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


# Every JPEG variant a dataset commonly holds: the three chroma subsamplings, progressive,
# greyscale, CMYK (Adobe), and low and high quality.
VARIANTS = {
    "444_q90": {"quality": 90, "subsampling": 0},
    "422_q90": {"quality": 90, "subsampling": 1},
    "420_q90": {"quality": 90, "subsampling": 2},
    "420_q60": {"quality": 60, "subsampling": 2},
    "progressive": {"quality": 90, "progressive": True},
    "optimized_q98": {"quality": 98, "optimize": True},
}


def _jpeg_bytes(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def _pil_pixels(data: bytes) -> np.ndarray:
    # The independent route: PIL decodes, converts to RGB, HWC uint8.
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("photo", ["coffee", "chelsea", "astronaut", "rocket"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_jpeg_pixels_equal_pils(photo, variant):
    img = _photo(photo).resize((500, 375), Image.BILINEAR)
    data = _jpeg_bytes(img, **VARIANTS[variant])
    ours = decode_rgb_bytes(torch.frombuffer(bytearray(data), dtype=torch.uint8), "x.jpg")
    assert ours.dtype == torch.uint8
    assert ours.shape == (3, 375, 500)
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), _pil_pixels(data))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_jpegs_equal_pils_rgb(mode):
    data = _jpeg_bytes(_photo("coffee").resize((200, 150)).convert(mode), quality=92)
    ours = decode_rgb_bytes(torch.frombuffer(bytearray(data), dtype=torch.uint8), "x.jpg")
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), _pil_pixels(data))


def test_every_file_of_a_folder_decodes_like_load_rgb(tiny_imagefolder: Path):
    # PNG, palette, RGBA, 16-bit-free greyscale, BMP and CMYK files go through PIL.
    data = ImageFolderDataset(tiny_imagefolder)
    for i in range(len(data)):
        expected = np.asarray(load_rgb(data.path(i)))
        np.testing.assert_array_equal(data.load_tensor(i).permute(1, 2, 0).numpy(), expected)


def test_jpeg_header_reads_size_and_components(tmp_path: Path):
    for mode, components in (("RGB", 3), ("L", 1), ("CMYK", 4)):
        path = tmp_path / f"{mode}.jpg"
        _photo("chelsea").resize((123, 77)).convert(mode).save(path, quality=90, progressive=True)
        data = read_bytes(path)
        assert is_jpeg(data)
        assert jpeg_header(data) == (components, 77, 123)
    png = tmp_path / "x.png"
    Image.new("RGB", (5, 4)).save(png)
    assert not is_jpeg(read_bytes(png))
    assert jpeg_header(read_bytes(png)) is None
    assert jpeg_header(torch.tensor([0xFF, 0xD8, 0xFF, 0xE0, 0, 2], dtype=torch.uint8)) is None


def test_damaged_files_raise_bad_image_with_their_path(tiny_imagefolder_corrupt: Path, tmp_path):
    with pytest.raises(BadImageError, match="zz_corrupt.jpg"):
        decode_rgb(tiny_imagefolder_corrupt / CORRUPT_KEY)
    whole = (tiny_imagefolder_corrupt / "cat" / "chelsea.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadImageError, match="cut.jpg"):
        decode_rgb(tmp_path / "cut.jpg")
    with pytest.raises(BadImageError, match="missing.jpg"):
        decode_rgb(tmp_path / "missing.jpg")
