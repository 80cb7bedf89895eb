"""Labels in the teacher's class order: class lists, the guard before a pass, the check after.

A sample's label is the position of its class folder in a class list. PLD ranks the label
first and KD's and DKD's CE terms use it, so the label must be the teacher's class index.
Sorted folder names give that only when the folders are exactly the teacher's classes (a
full ImageNet-1k folder). A subset (ImageNet-100, Imagenette, a few hundred wnids, a folder
lacking some classes) needs the teacher's full class list. Two guards catch a mismatch:
before the pass (fewer folders than teacher classes and no list given) and after it
(teacher top-1 against the labels near chance: the cache is kept but flagged). A student
run checks that its dataset gives the cache's labels and refuses a flagged cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

import storage
from pld_pipeline.configs.cache import SORTED_FOLDERS, ClassesSpec, check_class_names
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import ClassListError, LabelOrderError
from storage.summary import class_list_text

logger = logging.getLogger(__name__)

# The default least teacher top-1 against the labels, in multiples of chance (1 / C).
CHANCE_MULTIPLE = 5.0
CLASS_LIST_DOCS = "'Class lists' in docs/imagenet.md"


def resolve_classes(spec: ClassesSpec) -> list[str] | None:
    """The class list a `classes` field names; None means the sorted folder names.

    Raises:
        ClassListError: the file does not exist or holds an invalid list.
    """
    if spec is None or spec == SORTED_FOLDERS:
        return None
    if isinstance(spec, list):
        return list(spec)
    return read_class_list(spec)


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Read a class list file: one class-folder name per line, blank lines ignored.

    Raises:
        ClassListError: the file is missing or unreadable, or names a class twice.
    """
    file = Path(path)
    if not file.is_file():
        raise ClassListError(
            f"Class list file {str(file)!r} does not exist. Give a text file with one class-"
            "folder name per line in the teacher's index order (see "
            f"{CLASS_LIST_DOCS}), a list of names, or 'sorted-folders'."
        )
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassListError(f"Cannot read class list file {str(file)!r}: {exc}") from exc
    names = [line.strip() for line in lines if line.strip()]
    try:
        return check_class_names(names, where=f"class list file {str(file)!r}")
    except ValueError as exc:
        raise ClassListError(str(exc)) from exc


def load_dataset(
    root: str | os.PathLike, split: str | None, spec: ClassesSpec
) -> ImageFolderDataset:
    """The dataset listing with the labels `spec` gives (see `resolve_classes`)."""
    return ImageFolderDataset(root, split=split, classes=resolve_classes(spec))


def _describe(spec: ClassesSpec) -> str:
    return "given as a list" if isinstance(spec, list) else f"from {spec!r}"


def check_label_space(dataset: ImageFolderDataset, num_classes: int, spec: ClassesSpec) -> None:
    """The guard before a teacher pass: can these labels be the teacher's class indices?

    Args:
        dataset: listed with `spec` (`load_dataset`).
        num_classes: C, the teacher's outputs.
        spec: the config's `classes`.

    Raises:
        ClassListError: a class list of another length than C; more folders than C; or
            fewer folders than C with no class list given (pass the list, or opt in to
            'sorted-folders').
    """
    root = str(dataset.root)
    if resolve_classes(spec) is not None:
        if len(dataset.classes) != num_classes:
            raise ClassListError(
                f"The class list {_describe(spec)} has {len(dataset.classes)} names but the "
                f"teacher outputs {num_classes} classes. It must name every teacher output in "
                "index order (position i = teacher class i), e.g. all 1000 ImageNet wnids for an "
                "ImageNet-1k teacher even when the dataset holds 100 of them; use placeholder "
                "names for outputs without a folder."
            )
        return
    folders = len(dataset.folders)
    if folders > num_classes:
        raise ClassListError(
            f"The dataset at {root!r} has {folders} class folders but the teacher outputs "
            f"only {num_classes} classes; use a teacher trained on these classes."
        )
    if folders < num_classes and spec is None:
        raise ClassListError(
            f"The dataset at {root!r} has {folders} class folders but the teacher outputs "
            f"{num_classes} classes, and no class list was given. Labels would be the sorted "
            f"folders' positions 0..{folders - 1}, which are the teacher's class indices only "
            f"if these folders are exactly its first {folders} classes, in that order; for a "
            "subset (ImageNet-100, Imagenette, some wnids) they are not, and students would be "
            "taught the wrong label. Set `classes` to the teacher's class list in its index "
            "order (a list, or a text file with one folder name per line, e.g. the 1000 "
            f"ImageNet wnids; see {CLASS_LIST_DOCS}). If the sorted positions really are the "
            "teacher's indices, set classes: sorted-folders."
        )


def class_list_record(dataset: ImageFolderDataset, spec: ClassesSpec) -> storage.ClassList:
    """The manifest's record of the class list that made `dataset`'s labels."""
    return storage.ClassList(
        sha256=storage.class_list_sha256(dataset.classes),
        num_classes=len(dataset.classes),
        source="sorted-folders" if resolve_classes(spec) is None else "list",
    )


def default_min_agreement(num_classes: int) -> float:
    """5x chance (5 / C), but at most halfway between chance and 1 (reachable when C < 9)."""
    chance = 1.0 / num_classes
    return min(CHANCE_MULTIPLE * chance, (1.0 + chance) / 2.0)


def agreement_check(
    top1: float, records: int, num_classes: int, min_agreement: float | None
) -> storage.LabelCheck:
    """The check after the pass: teacher top-1 against the labels vs. the least accepted.

    Args:
        top1: fraction of (view, sample) records whose teacher top-1 class is the label.
        records: how many records (undecodable samples excluded).
        num_classes: C.
        min_agreement: the config's `min_label_agreement` (None: `default_min_agreement`).
    """
    least = default_min_agreement(num_classes) if min_agreement is None else float(min_agreement)
    return storage.LabelCheck(top1=float(top1), min_agreement=least, records=int(records))


def mismatch_message(check: dict[str, Any], path: str) -> str:
    """Why a flagged cache's labels are suspect, and the fixes (manifest `label_check`)."""
    return (
        f"Teacher top-1 against the labels of {path} is {check['top1']:.4f} over "
        f"{check['records']} records, below the {check['min_agreement']:.4f} required "
        "(min_label_agreement, default 5x chance): the labels probably do not follow the "
        "teacher's class order. The cache is finished and kept, flagged as a label mismatch "
        "(pld inspect shows it; students refuse it). Fix: set `classes` to the teacher's class "
        f"list in index order (e.g. the 1000 ImageNet wnids, see {CLASS_LIST_DOCS}) and "
        "re-create the cache with overwrite=true. If the labels are right and the teacher is "
        "only weak on these images, rerun the pass with a lower min_label_agreement, or train "
        "with allow_label_mismatch=true."
    )


def require_agreement(check: dict[str, Any] | None, path: str) -> None:
    """Raise when the pass's label check flagged the cache (after its stats are published).

    Raises:
        LabelOrderError: the check's `flagged` is set.
    """
    if check is not None and check.get("flagged"):
        raise LabelOrderError(mismatch_message(check, path))


def check_run_labels(
    reader: storage.CacheReader,
    images: ImageFolderDataset,
    cache: str,
    dataset_root: str,
    allow_label_mismatch: bool,
) -> None:
    """A student run's check: its dataset gives the cache's labels, and the cache is not flagged.

    Call after the keys are checked (`reader.validate(dataset_keys=...)`), so row i of the
    cache is sample i of `images`.

    Raises:
        LabelOrderError: the pass flagged the cache and `allow_label_mismatch` is off.
        ClassListError: the dataset maps its folders to other labels, or another class list
            than the cache's.
    """
    manifest = reader.manifest
    if manifest.label_mismatch:
        message = mismatch_message(dataclasses.asdict(manifest.label_check), cache)
        if not allow_label_mismatch:
            raise LabelOrderError(
                f"Refusing to train from a flagged cache. {message} To train from it anyway, "
                "set allow_label_mismatch=true."
            )
        logger.warning("Training from a flagged cache (allow_label_mismatch=true): %s", message)
    stored, mine = np.asarray(reader.labels), np.asarray(images.labels)
    differ = np.flatnonzero(stored != mine)
    if differ.size:
        i = int(differ[0])
        raise ClassListError(
            f"{dataset_root!r} maps its class folders to other labels than the cache {cache!r}: "
            f"{differ.size} of {len(mine)} labels differ, e.g. {images.keys[i]!r} is label "
            f"{int(mine[i])} here and {int(stored[i])} in the cache. Give this run the same "
            f"`classes` as the cache's teacher pass (the cache's: "
            f"{class_list_text(manifest.to_dict().get('class_list'))})."
        )
    recorded = manifest.class_list
    if recorded is not None and storage.class_list_sha256(images.classes) != recorded.sha256:
        raise ClassListError(
            f"The class list of this run ({len(images.classes)} names, sha256 "
            f"{storage.class_list_sha256(images.classes)[:12]}...) is not the one {cache!r} was "
            f"made with ({recorded.num_classes} names, sha256 {recorded.sha256[:12]}...). The "
            "training labels agree, but classes without training images (e.g. in val_root) "
            "would map to other indices; use the cache's class list as `classes`."
        )
