"""Fashion-MNIST (Debian's `dataset-fashion-mnist`) written out as ImageNet-layout PNG folders."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pld_pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
MARKER = ".complete"  # written last into a finished split folder: its settings, its size
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip IDX file (the MNIST format): a big-endian header, then uint8 data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * d : 8 + 4 * d], "big") for d in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str, source: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] of one split ("train" or "val").

    Raises:
        ConfigError: when the Debian package's files are missing.
    """
    images_path, labels_path = _source_files(split, source)
    return read_idx(images_path), read_idx(labels_path)


def _source_files(split: str, source: Path) -> tuple[Path, Path]:
    images_name, labels_name = FILES[split]
    images_path, labels_path = source / images_name, source / labels_name
    if not images_path.is_file() or not labels_path.is_file():
        raise ConfigError(
            f"Fashion-MNIST not found at {source} (looked for {images_name}); install it with "
            "`apt-get install dataset-fashion-mnist` (make demo does this) or pass its folder."
        )
    return images_path, labels_path


def _settings(per_class: int | None, seed: int) -> str:
    return f"per_class={per_class} seed={seed}"


def check_image_folder(
    root: Path, split: str, per_class: int | None, seed: int, source: Path = DEBIAN_DIR
) -> bool:
    """Whether `write_image_folder` would find the split complete (True) or write it (False).

    Raises:
        ConfigError: the folder was written with other settings, or it must be written and
            the source files are missing.
    """
    marker = Path(root) / split / MARKER
    settings = _settings(per_class, seed)
    if marker.is_file():
        written = marker.read_text().splitlines()[0]
        if written != settings:
            raise ConfigError(
                f"{marker.parent} was written with {written}, not {settings}; use another "
                "workdir or delete that folder (and what was trained from it) to rewrite it."
            )
        return True
    _source_files(split, source)
    return False


def balanced_subset(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of up to `per_class` samples of each class, chosen by a seeded shuffle."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(len(CLASSES))]
    return np.sort(np.concatenate(chosen))


def write_image_folder(
    root: Path,
    split: str,
    per_class: int | None = None,
    seed: int = 0,
    source: Path = DEBIAN_DIR,
) -> Path:
    """Write `root/<split>/<class>/<index>.png` and return the split folder.

    Idempotent: a split folder with a `.complete` marker is left as it is, and a
    half-written one (killed mid-way) is finished, since files are written atomically.
    """
    out = Path(root) / split
    if check_image_folder(root, split, per_class, seed, source):
        return out
    images, labels = load_split(split, source)
    picked = balanced_subset(labels, per_class, seed)
    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    for index in picked:
        path = out / CLASSES[labels[index]] / f"{split}-{index:05d}.png"
        if path.exists():
            continue
        tmp = path.with_suffix(".tmp")
        Image.fromarray(images[index], mode="L").save(tmp, format="PNG")
        tmp.replace(path)
    (out / MARKER).write_text(f"{_settings(per_class, seed)}\n{len(picked)} images\n")
    logger.info("Wrote %d %s images to %s", len(picked), split, out)
    return out
