"""Decoding image files to uint8 RGB tensors: libjpeg-turbo via torchvision for JPEGs, PIL otherwise.

`torchvision.io.decode_jpeg` on the CPU gives the same pixels as PIL's decoder (both are
libjpeg-turbo with the same IDCT and chroma upsampling; tests compare baseline 4:4:4,
4:2:2 and 4:2:0, progressive, grayscale and CMYK files, and `bench/student_data.py`
checks it on every run) and is about 1.5-2.5x faster, mostly because it writes straight
into a tensor. So it is the default decoder of both the teacher pass and the students:
the student sees the pixels the teacher saw. Anything it cannot read (PNG and other
formats, 12-bit or damaged JPEGs) goes through PIL and `rgb.to_rgb`, which also
gives damaged files their `BadImageError`.

One contract for every decoder (the table is `docs/image-files.md`): EXIF orientation is
ignored (neither decoder applies it, as torchvision's ImageFolder), colour and alpha follow
`rgb.to_rgb` (alpha over white), and an image is refused before decoding when it is
empty, unreadable, or larger than PIL's decompression-bomb limit, whatever its format, so
libjpeg-turbo and nvJPEG (which have no such limit) refuse what PIL refuses.

torchvision marks its image codecs deprecated from 0.29 (TorchCodec takes them over) but
still ships them; should a release drop them, every file goes through PIL, with the same
pixels.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

import torch
import torchvision.transforms.v2.functional as TF

try:  # deprecated since torchvision 0.29 in favour of TorchCodec, still shipped
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - a torchvision without image ops: PIL decodes
    ImageReadMode = decode_jpeg = None

from pld_pipeline.errors import BadImageError
from pld_pipeline.rgb import NOT_AN_IMAGE, to_rgb

JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers (baseline, extended, progressive, lossless, ...): not DHT (C4),
# JPG (C8) or DAC (CC), which share the C0-CF range.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def read_bytes(path: str | os.PathLike) -> torch.Tensor:
    """The raw bytes of a file as a uint8 tensor [n] (what `decode_jpeg` takes).

    Raises:
        BadImageError: the file cannot be read (missing, a broken symlink or a symlink
            loop, no permission) or is empty; the reason says which.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BadImageError.of(path, unreadable_reason(path, exc)) from exc
    if not data:
        raise BadImageError.of(path, "the file is empty (0 bytes)")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def unreadable_reason(path: str | os.PathLike, exc: OSError) -> str:
    """Why `open(path)` failed, in a user's words (from the error number, never its text)."""
    if exc.errno == errno.ELOOP:
        return "a symlink loop (following it never reaches a file)"
    if exc.errno == errno.ENOENT:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"a broken symlink (its target {target!r} does not exist)"
        return "the file is gone (deleted or moved after the folder was listed)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "no permission to read the file"
    return f"the file cannot be read ({type(exc).__name__}: {exc.strerror or exc})"


def pixel_limit() -> int | None:
    """The most pixels an image may have: twice `PIL.Image.MAX_IMAGE_PIXELS`, where PIL
    raises `DecompressionBombError` (None: the user switched PIL's limit off).

    libjpeg-turbo and nvJPEG have no such limit; checking it from the JPEG header for
    them too gives every decoder PIL's answer.
    """
    from PIL import Image  # noqa: PLC0415

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def check_pixel_count(height: int, width: int, name: str) -> None:
    """Refuse an image over `pixel_limit()`.

    Raises:
        BadImageError: too many pixels; the message names `name`.
    """
    limit = pixel_limit()
    if limit is not None and height * width > limit:
        raise BadImageError.of(
            name,
            f"too large: {width}x{height} = {height * width:,} pixels, over the "
            f"decompression-bomb limit of {limit:,} (2 x PIL.Image.MAX_IMAGE_PIXELS)",
        )


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

    Walks the marker segments from the start of the file to the first start-of-frame
    (jumping over each segment, so large EXIF or ICC segments cost nothing).
    """
    raw = memoryview(data.numpy())  # no copy
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
        BadImageError: neither decoder can read it, or it is over `pixel_limit()`; the
            message names `name`.
    """
    if decode_jpeg is not None and is_jpeg(data):
        header = jpeg_header(data)
        if header is not None:
            check_pixel_count(header.height, header.width, name)
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # 12-bit, damaged, or a variant libjpeg-turbo refuses: PIL decides
    return _decode_with_pil(data, name)


def decode_rgb(path: str | os.PathLike) -> torch.Tensor:
    """Decode one image file to a uint8 RGB tensor [3, H, W]; see `decode_rgb_bytes`."""
    return decode_rgb_bytes(read_bytes(path), str(path))


def decode_problem(path: str | os.PathLike) -> str | None:
    """Why `decode_rgb(path)` fails, in a few words (`BadImageError.reason`); None when it
    decodes."""
    try:
        decode_rgb(path)
    except BadImageError as exc:
        return exc.reason
    return None


def _decode_with_pil(data: torch.Tensor, name: str) -> torch.Tensor:
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
            img.load()
            return TF.pil_to_tensor(to_rgb(img))
    except Image.DecompressionBombError as exc:
        raise BadImageError.of(name, f"too large for the decompression-bomb limit ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise BadImageError.of(name, NOT_AN_IMAGE) from exc
    except Exception as exc:  # PIL's plugins raise many types on damaged files
        # (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, ...): each
        # one means this file cannot be decoded.
        raise BadImageError.of(name, f"cannot be decoded ({type(exc).__name__}: {exc})") from exc
