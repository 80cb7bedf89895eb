"""ImageNet-layout image folders: listing, stable keys, labels, sizes, fingerprint, RGB decoding.

Layout (torchvision ImageFolder conventions): `root/<class>/<image>`, classes are the
sorted sub-folder names, images are the files with an image extension anywhere below a
class folder. A torchvision `ImageNet` root (`root/train/<wnid>/...`, `root/val/<wnid>/...`)
is read with `split="train"` / `split="val"`. Sample keys are posix paths relative to the
folder holding the classes (`n01440764/n01440764_10026.JPEG`), sorted, so they do not depend
on the machine, the mount point or the file system's listing order.

Odd entries never stop the listing: a broken symlink or a symlink loop is listed (reading
it then fails, so the pass records it as bad or names it); a symlink to a folder already
listed (a loop, the root, a class folder) is not followed, so no image is listed twice or
under another class; a file that vanishes while listing is left out; a folder that cannot
be listed is left out with a warning. A file name that is not valid UTF-8 keeps its file,
and its key writes the undecodable bytes as `\\xNN` (keys are UTF-8 in the cache).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pld_pipeline.errors import DatasetError, DatasetNotFoundError

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS, compared case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def split_folder(root: str | os.PathLike, split: str | None = None) -> Path:
    """The folder holding the class folders: `root`, or `root/split`.

    Raises:
        DatasetNotFoundError: root or split folder missing.
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetNotFoundError(
            f"Dataset root {str(base)!r} is not a folder; pass the folder that holds "
            "<class>/<image> files (or the ImageNet root with split='train'/'val')."
        )
    if split is None:
        return base
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not (base / split).is_dir():
        raise DatasetNotFoundError(
            f"Split folder {str(base / split)!r} does not exist (sub-folders of the root: "
            f"{found[:10]}); pass an existing split or split=None for root/<class>/<image>."
        )
    return base / split


class ImageFolderDataset:
    """A listing of an ImageNet-layout folder with decoding to RGB.

    Attributes:
        root: the folder holding the class folders (`root/split` when a split was given).
        classes: class names, label i = classes[i]: the sorted folder names, or the list given
            (which may name classes without a folder here).
        folders: the class folders found, sorted.
        keys: [N] sample keys, relative posix paths, sorted.
        labels: [N] int32 class index of each sample.
        sizes: [N] int64 file size in bytes (part of the fingerprint).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        classes: Sequence[str] | None = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
        allow_empty: bool = False,
    ) -> None:
        """List the folder.

        Args:
            root: dataset root; `root/<class>/<image>` or, with `split`, `root/<split>/<class>/...`.
            split: sub-folder to read (torchvision ImageNet roots: "train" or "val").
            classes: pin the class list (label = position in it), e.g. the 1000 ImageNet
                wnids for a folder holding only some of them; every class folder found
                must be in it. Default: the sorted folder names.
            extensions: file name endings counted as images (case-insensitive).
            allow_empty: accept class folders without images (else an error, as torchvision).

        Raises:
            DatasetNotFoundError: root or split folder missing.
            DatasetError: no class folders, an empty class, no images, or a folder not in `classes`.
        """
        base = split_folder(root, split)
        self.root = base
        self.split = split
        found_classes = sorted(e.name for e in os.scandir(base) if e.is_dir())
        self.folders = found_classes
        _check_class_names(found_classes, base)
        if not found_classes:
            raise DatasetError(
                f"No class folders in {str(base)!r}; expected the layout root/<class>/<image>."
            )
        if classes is None:
            self.classes = found_classes
        else:
            self.classes = list(classes)
            unknown = sorted(set(found_classes) - set(self.classes))
            if unknown:
                raise DatasetError(
                    f"{len(unknown)} class folders in {str(base)!r} are not in the given class "
                    f"list ({len(self.classes)} classes): {unknown[:10]}"
                    f"{' ...' if len(unknown) > 10 else ''}; the list must name every folder "
                    "(use the teacher's full class list), or remove those folders."
                )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        # key -> path relative to root, for the few keys that differ from their path
        self._odd_paths: dict[str, str] = {}
        self._fingerprint: str | None = None
        self.keys, self.labels, self.sizes = self._scan(
            found_classes, tuple(extensions), allow_empty
        )

    def _scan(
        self, found_classes: list[str], extensions: tuple[str, ...], allow_empty: bool
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        lower_ext = tuple(e.lower() for e in extensions)
        entries: list[tuple[str, int, int]] = []
        # The root and every class folder count as listed from the start, so a symlink to
        # one of them (or to a folder above, a loop) is never followed.
        seen = {_folder_id(self.root)} | {_folder_id(self.root / name) for name in found_classes}
        for name in found_classes:
            count = 0
            class_dir = os.path.join(self.root, name)
            walk = os.walk(class_dir, followlinks=True, onerror=_warn_unlisted)
            for dirpath, dirs, files in walk:
                dirs[:] = _new_folders(dirpath, dirs, seen)
                # The key's folder part, by string (os.walk's paths extend class_dir): a
                # relpath per file was most of the listing's time on 1.28 M files.
                rel_dir = name + dirpath[len(class_dir) :].replace(os.sep, "/")
                for fname in files:
                    if not fname.lower().endswith(lower_ext):
                        continue
                    size = _listed_size(os.path.join(dirpath, fname))
                    if size is None:
                        continue
                    rel = f"{rel_dir}/{fname}"
                    key = printable_key(rel)
                    if key != rel:
                        self._odd_paths[key] = rel
                    entries.append((key, self.class_to_idx[name], size))
                    count += 1
            if count == 0 and not allow_empty:
                raise DatasetError(
                    f"Class folder {class_dir!r} holds no images with extensions "
                    f"{list(extensions)}; add images, remove the folder, or pass allow_empty=True."
                )
        if not entries:
            raise DatasetError(f"No images found under {str(self.root)!r}.")
        entries.sort(key=lambda e: e[0])
        keys = [e[0] for e in entries]
        for a, b in zip(keys, keys[1:], strict=False):
            if a == b:
                raise DatasetError(
                    f"Two files under {str(self.root)!r} have the key {a!r}: one of them has a "
                    "name that is not valid UTF-8 and is written that way; rename it to UTF-8."
                )
        labels = np.array([e[1] for e in entries], dtype=np.int32)
        sizes = np.array([e[2] for e in entries], dtype=np.int64)
        return keys, labels, sizes

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={str(self.root)!r}, {len(self)} images, "
            f"{len(self.classes)} classes)"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, i: int) -> Path:
        """Absolute path of sample `i`."""
        return self.path_of(self.keys[i])

    def path_of(self, key: str) -> Path:
        """Absolute path of the sample with key `key`."""
        return self.root / self._odd_paths.get(key, key)

    @classmethod
    def from_keys(
        cls,
        root: str | os.PathLike,
        split: str | None,
        keys: Sequence[str],
        labels: Sequence[int],
    ) -> ImageFolderDataset:
        """The listing a cache stored (its keys and labels), made without scanning the folder.

        A teacher pass lists its folder once; Dask workers and later steps take the keys
        from the cache instead of listing a 1.28 M-image folder again. File sizes are not
        known, so such a listing has no `fingerprint`.
        """
        listing = cls.__new__(cls)
        listing.root, listing.split = split_folder(root, split), split
        listing.keys = [str(k) for k in keys]
        listing.labels = np.asarray(labels, dtype=np.int32)
        listing.sizes = None
        listing.classes = listing.folders = sorted({k.split("/", 1)[0] for k in listing.keys})
        listing.class_to_idx = {}
        listing._fingerprint = None
        # A key that spells undecodable bytes of a file name as \xNN names that file.
        listing._odd_paths = {
            key: path
            for key in listing.keys
            if "\\x" in key
            if os.path.lexists(listing.root / (path := _path_of_printable_key(key)))
        }
        return listing

    def fingerprint(self) -> str:
        """The dataset fingerprint stored in the cache manifest (storage.fingerprint of keys,
        sizes), computed once."""
        if self._fingerprint is None:
            import storage  # noqa: PLC0415 - zarr loads only when a fingerprint is needed

            if self.sizes is None:
                raise DatasetError(
                    f"{self!r} was made from stored keys: it has no file sizes to fingerprint"
                )
            self._fingerprint = storage.fingerprint(self.keys, self.sizes.tolist())
        return self._fingerprint

    def load_rgb(self, i: int) -> Image.Image:
        """Decode sample `i` as an RGB image.

        Returns:
            PIL image in mode "RGB" (grayscale, palette, CMYK, 16-bit and alpha images converted).

        Raises:
            BadImageError: the file cannot be opened or decoded; the message names its path.
        """
        from pld_pipeline.rgb import load_rgb  # noqa: PLC0415 - listing needs no decoder

        return load_rgb(self.path(i))

    def load_tensor(self, i: int) -> torch.Tensor:
        """Decode sample `i` as a uint8 RGB tensor [3, H, W] (`decoding.decode_rgb`).

        The same pixels as `TF.pil_to_tensor(load_rgb(i))`, faster for JPEGs.

        Raises:
            BadImageError: the file cannot be opened or decoded; the message names its path.
        """
        from pld_pipeline.decoding import decode_rgb  # noqa: PLC0415 - keeps torch out of listing

        return decode_rgb(self.path(i))


def _path_of_printable_key(key: str) -> str:
    """The file name a `printable_key` stands for (its `\\xNN` as the bytes they spell)."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), key.encode())
    return os.fsdecode(raw)


def printable_key(rel: str) -> str:
    """A path relative to the root as a key: itself, or (for a name that is not valid
    UTF-8, which Python holds as surrogate escapes) its undecodable bytes as `\\xNN`."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace")
    return rel


def _check_class_names(names: Sequence[str], base: Path) -> None:
    """Class names are identities (class lists, the manifest): they must be valid UTF-8."""
    for name in names:
        if printable_key(name) != name:
            raise DatasetError(
                f"Class folder {printable_key(name)!r} in {str(base)!r} has a name that is not "
                "valid UTF-8; rename it (class names are written to the cache as UTF-8)."
            )


def _folder_id(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _new_folders(dirpath: str, dirs: list[str], seen: set) -> list[str]:
    """The sub-folders of `dirpath` not listed yet (marked listed now); a symlink to a
    folder already listed is left out with a warning."""
    kept = []
    for name in dirs:
        folder = os.path.join(dirpath, name)
        ident = _folder_id(folder)
        if ident is None:
            logger.warning("Not listing %s: it vanished while listing.", printable_key(folder))
            continue
        if ident in seen:
            logger.warning(
                "Not listing %s: it leads to a folder already listed (a symlink loop, or a "
                "link to the root or a class folder), so its images would be listed twice.",
                printable_key(folder),
            )
            continue
        seen.add(ident)
        kept.append(name)
    return kept


def _listed_size(path: str) -> int | None:
    """The file's size for the fingerprint: the target's, or for a broken symlink or a
    symlink loop the link's own (it is listed; reading it fails); None for a file that
    vanished while listing (left out)."""
    try:
        return os.stat(path).st_size
    except OSError:
        pass
    try:
        return os.lstat(path).st_size
    except OSError:
        logger.warning("Not listing %s: it vanished while listing.", printable_key(path))
        return None


def _warn_unlisted(exc: OSError) -> None:
    logger.warning(
        "Cannot list folder %s (%s): its images are left out.",
        printable_key(str(exc.filename)), exc.strerror or exc,
    )  # fmt: skip
