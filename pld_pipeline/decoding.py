"""Decoding image files to uint8 RGB tensors: libjpeg-turbo via torchvision for JPEGs, PIL otherwise.

`torchvision.io.decode_jpeg` on the CPU gives the same pixels as PIL's decoder (both are
libjpeg-turbo with the same IDCT and chroma upsampling; tests compare baseline 4:4:4,
4:2:2 and 4:2:0, progressive, grayscale and CMYK files, and `bench/student_data.py`
checks it on every run) and is about 1.5-2.5x faster, mostly because it writes straight
into a tensor. So it is the default decoder of both the teacher pass and the students:
the student sees the pixels the teacher saw. Anything it cannot read (PNG and other
formats, 12-bit or damaged JPEGs) goes through PIL and `rgb.to_rgb`, which also
gives damaged files their `BadImageError`.

torchvision marks its image codecs deprecated from 0.29 (TorchCodec takes them over) but
still ships them; should a release drop them, every file goes through PIL, with the same
pixels.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torchvision.transforms.v2.functional as TF

try:  # deprecated since torchvision 0.29 in favour of TorchCodec, still shipped
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - a torchvision without image ops: PIL decodes
    ImageReadMode = decode_jpeg = None

from pld_pipeline.errors import BadImageError
from pld_pipeline.rgb import to_rgb

JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers (baseline, extended, progressive, lossless, ...): not DHT (C4),
# JPG (C8) or DAC (CC), which share the C0-CF range.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def read_bytes(path: str | os.PathLike) -> torch.Tensor:
    """The raw bytes of a file as a uint8 tensor [n] (what `decode_jpeg` takes).

    Raises:
        BadImageError: the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BadImageError(f"Cannot read image {str(path)!r}: {exc}.") from exc
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def is_jpeg(data: torch.Tensor) -> bool:
    """True when the bytes start like a JPEG file (SOI marker then another marker)."""
    return data.numel() >= 3 and bytes(data[:3].tolist()) == JPEG_MAGIC


class JpegHeader(NamedTuple):
    """What a JPEG's frame header says: colour components (1 grey, 3 YCbCr, 4 CMYK/YCCK)
    and the image size in pixels."""

    components: int
    height: int
    width: int


def jpeg_header(data: torch.Tensor) -> JpegHeader | None:
    """Read a JPEG's frame header without decoding (None: no frame header found, so the
    file is damaged or not a JPEG).

    Walks the marker segments from the start of the file to the first start-of-frame.
    """
    raw = data[: 1 << 16].numpy().tobytes()  # frame headers sit near the start
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            return None
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            if pos + 10 > len(raw):
                return None
            height = int.from_bytes(raw[pos + 5 : pos + 7], "big")
            width = int.from_bytes(raw[pos + 7 : pos + 9], "big")
            return JpegHeader(raw[pos + 9], height, width)
        pos += 2 + int.from_bytes(raw[pos + 2 : pos + 4], "big")
    return None


def decode_rgb_bytes(data: torch.Tensor, name: str) -> torch.Tensor:
    """Decode an image file's bytes to RGB (torchvision for JPEGs, else PIL).

    Args:
        data: uint8 [n] file bytes.
        name: the file's path or key, for error messages.

    Returns:
        uint8 tensor [3, H, W] (for JPEGs a view of an [H, W, 3] buffer: channels-last
        strides, which torch's uint8 resize reads directly).

    Raises:
        BadImageError: neither decoder can read it; the message names `name`.
    """
    if decode_jpeg is not None and is_jpeg(data):
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # 12-bit, damaged, or a variant libjpeg-turbo refuses: PIL decides
    return _decode_with_pil(data, name)


def decode_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Decode one image file to a uint8 RGB tensor [3, H, W]; see `decode_rgb_bytes`."""
    return decode_rgb_bytes(read_bytes(path), str(path))


def _decode_with_pil(data: torch.Tensor, name: str) -> torch.Tensor:
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
            img.load()
            return TF.pil_to_tensor(to_rgb(img))
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise BadImageError(
            f"Cannot decode image {name!r}: {type(exc).__name__}: {exc}. Replace or remove "
            "the file, or set skip_bad_images to record it as bad and exclude it."
        ) from exc
