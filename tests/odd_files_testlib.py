"""The odd-file corpus: every kind of file a real image folder holds, written on the spot.

`write_corpus(root)` puts one file of each kind (empty, truncated, text named `.jpg`, PNG
named `.JPEG`, CMYK and YCCK JPEGs, greyscale, 16-bit, palette with transparency, RGBA,
EXIF-rotated, progressive, 1x1, a 30000x2 strip, a decompression bomb, odd names,
symlinks and loops, no read permission, a file that vanishes after listing) into the class
folder `odd/` of an ImageNet-layout folder, next to a few plain images in `plain/`, and
returns what each file must become: decoded (with an independent PIL + numpy reference
of its pixels), bad (with a fragment of its reason), or not listed. No binary file is kept
in git; the tests and `bench/odd_files.py` share this writer.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ODD = "odd"
PLAIN = "plain"
DECODED, BAD, NOT_LISTED = "decoded", "bad", "not listed"
NON_UTF8_NAME = b"latin1_\xe9t\xe9.jpg"  # "été" in Latin-1: not valid UTF-8
NON_UTF8_KEY = f"{ODD}/latin1_\\xe9t\\xe9.jpg"  # how the listing writes its key
# Run a command as root without the capabilities that let root read any file, so file
# permissions apply (a test running as root proves the no-read-permission case this way).
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@dataclass(frozen=True)
class OddFile:
    """One corpus entry: its key, what it is, and what the pipeline must make of it."""

    key: str
    kind: str
    outcome: str  # DECODED, BAD or NOT_LISTED
    reason: str = ""  # a fragment of the bad reason (BAD)
    alpha: bool = False  # composited on white: the reference is numpy's, +-1 level


@dataclass
class Corpus:
    """The written corpus: its root, entries and the file to delete after listing."""

    root: Path
    files: list[OddFile] = field(default_factory=list)
    vanishing: Path | None = None

    def keys(self, outcome: str) -> list[str]:
        """Keys with this outcome, sorted (the listing's order)."""
        return sorted(f.key for f in self.files if f.outcome == outcome)

    def entry(self, key: str) -> OddFile:
        return next(f for f in self.files if f.key == key)

    def vanish(self) -> None:
        """Delete the file that goes missing between listing and reading."""
        if self.vanishing is not None:
            self.vanishing.unlink()


def generated(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Smooth colour gradients plus noise (crops differ, JPEG has real work to do)."""
    yy, xx = np.mgrid[0:height, 0:width]
    phase, freq = rng.uniform(0, 2 * np.pi, size=3), rng.uniform(0.05, 0.3, size=3)
    channels = [127 + 100 * np.sin(freq[c] * (xx + 0.7 * yy) + phase[c]) for c in range(3)]
    arr = np.stack(channels, axis=-1) + rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **options)
    return buf.getvalue()


def ycck_jpeg(img: Image.Image) -> bytes:
    """A 4-component JPEG whose Adobe marker says transform 2: decoders read it as YCCK.

    PIL writes CMYK JPEGs with transform 0; setting the marker's last byte to 2 makes the
    same stream a valid YCCK file (its colours differ from the CMYK file's, but every
    decoder must agree on them).
    """
    data = bytearray(jpeg_bytes(img.convert("CMYK")))
    at = data.index(b"Adobe") - 4  # the APP14 segment: FF EE, length (2), "Adobe", ...
    assert data[at : at + 2] == b"\xff\xee"
    data[at + 15] = 2  # ... version (2), flags0 (2), flags1 (2), transform
    return bytes(data)


def bomb_png(width: int = 20000, height: int = 18000) -> bytes:
    """A complete 1-bit PNG of width x height black pixels (360 M by default, over twice
    PIL's MAX_IMAGE_PIXELS): 44 kB on disk, a real image once the limit is lifted.

    Written by hand because PIL would need the whole image in memory to write it.
    """

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join([packer.compress(row) for _ in range(height)] + [packer.flush()])
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def reads_are_denied(folder: Path) -> bool:
    """Whether a file without read permission is unreadable to this process (False for root
    with CAP_DAC_OVERRIDE, the usual case in containers)."""
    probe = folder / ".probe-no-read"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        probe.read_bytes()
    except PermissionError:
        return True
    finally:
        probe.unlink()
    return False


def no_dac_prefix() -> list[str] | None:
    """The command prefix under which file permissions apply: none when not root, `NO_DAC`
    for root when setpriv can drop the capabilities, None when nothing can."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    probe = subprocess.run([*NO_DAC, sys.executable, "-c", "pass"], capture_output=True)
    return NO_DAC if probe.returncode == 0 else None


def write_corpus(root: Path, seed: int = 0, plain: int = 3) -> Corpus:
    """Write the corpus under `root` (`root/odd/...` and `plain` images in `root/plain/`,
    none and no such folder with plain=0).

    The no-read-permission file is bad where this process cannot read it, and decoded
    where it can (root with CAP_DAC_OVERRIDE): `reads_are_denied` decides, so the
    expectation is what this process will really see.
    """
    rng = np.random.default_rng(seed)
    odd, plain_dir = root / ODD, root / PLAIN
    odd.mkdir(parents=True, exist_ok=True)
    if plain:
        plain_dir.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root)
    add = corpus.files.append
    for j in range(plain):
        generated(rng, 40 + 4 * j, 52).save(plain_dir / f"plain_{j}.jpg", quality=90)
        add(OddFile(f"{PLAIN}/plain_{j}.jpg", "plain JPEG", DECODED))

    def put(name: str, data: bytes, kind: str, outcome: str = DECODED, reason: str = "",
            alpha: bool = False) -> Path:  # fmt: skip
        path = odd / name
        path.write_bytes(data)
        add(OddFile(f"{ODD}/{name}", kind, outcome, reason, alpha))
        return path

    base = generated(rng, 36, 48)
    whole = jpeg_bytes(base)
    put("good.jpg", whole, "plain JPEG (a symlink's target)")
    put("empty.jpg", b"", "empty file", BAD, "the file is empty (0 bytes)")
    put("truncated_header.jpg", whole[: whole.index(b"\xff\xda")], "JPEG cut after its header",
        BAD, "cannot be decoded")  # fmt: skip
    put("truncated_half.jpg", whole[: len(whole) // 2], "JPEG cut in half", BAD,
        "cannot be decoded")  # fmt: skip
    put("text.jpg", b"this is a text file, not an image\n", "text file named .jpg", BAD,
        "not an image")  # fmt: skip
    buf = io.BytesIO()
    generated(rng, 30, 44).save(buf, "PNG")
    put("png_named.JPEG", buf.getvalue(), "PNG named .JPEG")
    put("cmyk.jpg", jpeg_bytes(generated(rng, 34, 46).convert("CMYK")), "CMYK JPEG")
    put("ycck.jpg", ycck_jpeg(generated(rng, 34, 46)), "YCCK JPEG")
    put("grey.jpg", jpeg_bytes(generated(rng, 38, 30).convert("L")), "greyscale JPEG")
    buf = io.BytesIO()
    ramp = (np.linspace(0, 65535, 40 * 32) + rng.integers(0, 40, 40 * 32)).clip(0, 65535)
    Image.fromarray(ramp.reshape(32, 40).astype(np.uint16)).save(buf, "PNG")
    put("grey16.png", buf.getvalue(), "16-bit greyscale PNG")
    buf = io.BytesIO()
    generated(rng, 28, 40).quantize(colors=16).save(buf, "PNG", transparency=0)
    put("palette_transparent.png", buf.getvalue(), "palette PNG with transparency", alpha=True)
    rgba = generated(rng, 30, 42).convert("RGBA")
    alpha = rng.integers(0, 256, (30, 42)).astype(np.uint8)
    alpha[:, :8] = 0
    rgba.putalpha(Image.fromarray(alpha))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    put("rgba.png", buf.getvalue(), "RGBA PNG", alpha=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    put("exif_rotated.jpg", jpeg_bytes(generated(rng, 24, 40), exif=exif.tobytes()),
        "JPEG with an EXIF orientation tag")  # fmt: skip
    put("progressive.jpg", jpeg_bytes(generated(rng, 44, 60), progressive=True),
        "progressive JPEG")  # fmt: skip
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 90)).save(buf, "PNG")
    put("one_pixel.png", buf.getvalue(), "1x1 image")
    put("strip.jpg", jpeg_bytes(generated(rng, 2, 30000)), "30000x2 strip")
    put("bomb.png", bomb_png(), "over PIL's decompression-bomb limit", BAD, "too large")
    put("café au lait ☕ photo.jpg", jpeg_bytes(generated(rng, 32, 32)),
        "name with spaces and Unicode")  # fmt: skip
    with open(os.path.join(os.fsencode(odd), NON_UTF8_NAME), "wb") as f:
        f.write(jpeg_bytes(generated(rng, 26, 34)))
    add(OddFile(NON_UTF8_KEY, "name in non-UTF-8 bytes", DECODED))
    os.symlink("good.jpg", odd / "link_to_good.jpg")
    add(OddFile(f"{ODD}/link_to_good.jpg", "symlink to a file", DECODED))
    os.symlink("no_such_file.jpg", odd / "broken_link.jpg")
    add(OddFile(f"{ODD}/broken_link.jpg", "broken symlink", BAD, "a broken symlink"))
    os.symlink("self_loop.jpg", odd / "self_loop.jpg")
    add(OddFile(f"{ODD}/self_loop.jpg", "symlink loop (to itself)", BAD, "a symlink loop"))
    os.symlink(".", odd / "folder_loop")
    add(OddFile(f"{ODD}/folder_loop/good.jpg", "symlink loop (folder to itself)", NOT_LISTED))
    os.symlink("..", odd / "link_to_root")
    add(OddFile(f"{ODD}/link_to_root/{PLAIN}/plain_0.jpg", "symlink to the dataset root",
                NOT_LISTED))  # fmt: skip
    denied = reads_are_denied(odd)
    no_read = put("no_read.jpg", jpeg_bytes(generated(rng, 30, 30)), "no read permission",
                  BAD if denied else DECODED, "no permission to read" if denied else "")  # fmt: skip
    no_read.chmod(0)
    corpus.vanishing = put("vanishes.jpg", jpeg_bytes(generated(rng, 30, 36)),
                           "deleted between listing and reading", BAD, "the file is gone")  # fmt: skip
    return corpus


def reference_pixels(path: Path, entry: OddFile) -> np.ndarray:
    """The file decoded by PIL alone, as HWC uint8 RGB: no EXIF transpose; alpha composited
    on white and 16-bit greyscale scaled by 1/257 in float64 numpy (not by the pipeline's
    `to_rgb`)."""
    with Image.open(path) as img:
        img.load()
        if entry.alpha:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
            a = rgba[..., 3:] / 255.0
            return np.rint(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
        if img.mode.startswith("I;16") or img.mode == "I":
            grey = np.rint(np.asarray(img, dtype=np.float64) / 257.0).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return np.asarray(img.convert("RGB"))
