"""PIL images to 8-bit RGB: the one colour and alpha rule every decoder in the pipeline follows.

Both wings decode through here (directly, or after torchvision's JPEG decoder declines a
file, see `decoding`), so the teacher and the students see the same pixels.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from pld_pipeline.errors import BadImageError

# Background for images with an alpha channel: dropping alpha would expose whatever colour
# the encoder left under transparent pixels, compositing gives what a viewer shows.
ALPHA_BACKGROUND = (255, 255, 255)
# The reason given for a file no decoder recognises (a text file named .jpg, say).
NOT_AN_IMAGE = "not an image: no decoder recognises its contents"


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode one image file as RGB with PIL alone (see `to_rgb`): the
    reference route the tests and benchmarks compare `decoding.decode_rgb` with.

    Raises:
        BadImageError: unreadable, truncated, too large or not an image; names the path.
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode now, inside the try, so truncation is caught here
            return to_rgb(img)
    except Image.UnidentifiedImageError as exc:
        raise BadImageError.of(path, NOT_AN_IMAGE) from exc
    except Exception as exc:  # PIL's plugins raise many types on damaged files
        raise BadImageError.of(path, f"cannot be decoded ({type(exc).__name__}: {exc})") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Alpha (RGBA, LA, PA, palette with transparency) is composited on white; 16-bit
    grayscale is scaled by 1/257 to keep its full range (PIL's own conversion clips it);
    32-bit integer and float grayscale are clipped to 0..255; CMYK, YCbCr, L, 1, P use PIL's conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        gray = np.rint(np.asarray(img, dtype=np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode in ("I", "F"):
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
