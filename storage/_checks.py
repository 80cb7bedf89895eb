"""Compare a cache with what a caller expects: manifest fields and dataset keys."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from storage.errors import DatasetMismatchError, ManifestMismatchError
from storage.manifest import Manifest, flatten, jsonable

DERIVED_FIELDS = ("num_classes", "num_views", "num_shards")


def _expand(expect: dict[str, Any]) -> dict[str, Any]:
    # {"views": {"mode": "eval"}} and {"views": ViewInfo(...)} become dotted leaves,
    # so a nested expectation checks only the fields it names.
    flat: dict[str, Any] = {}
    for path, wanted in expect.items():
        if dataclasses.is_dataclass(wanted) and not isinstance(wanted, type):
            wanted = dataclasses.asdict(wanted)
        if isinstance(wanted, dict):
            for sub, value in flatten(jsonable(wanted)).items():
                flat[f"{path}.{sub}"] = value
        else:
            flat[path] = wanted
    return flat


def expectation_diffs(manifest: Manifest, expect: dict[str, Any]) -> list[str]:
    """Differences between ``manifest`` and ``expect`` (dotted field path -> value).

    Raises:
        ManifestMismatchError: ``expect`` names a field the manifest does not have.
    """
    fields = flatten(manifest.to_dict())
    diffs = []
    for path, wanted in _expand(expect).items():
        if path in fields:
            actual = fields[path]
        elif path in DERIVED_FIELDS:
            actual = getattr(manifest, path)
        else:
            raise ManifestMismatchError(
                f"unknown manifest field {path!r}; known fields: "
                f"{sorted(fields) + list(DERIVED_FIELDS)}"
            )
        if jsonable(actual) != jsonable(wanted):
            diffs.append(f"{path}: cache has {actual!r}, expected {wanted!r}")
    return diffs


def check_keys(
    where: str, stored: np.ndarray, dataset_keys: Sequence[str], same_set: bool = False
) -> None:
    """Raise unless ``dataset_keys`` equals the cache's keys [N], in the same order.

    ``same_set``: the caller knows both hold the same keys (their fingerprints match); then
    two strictly sorted lists are equal without comparing them key by key (a cache's keys
    are a sorted listing: that comparison was a second of a 1.28 M-image run's start).

    Raises:
        DatasetMismatchError: keys missing on either side (examples listed), or reordered.
    """
    keys = list(dataset_keys)
    if (
        same_set
        and len(keys) == len(stored)
        and not any(map(operator.ge, keys, keys[1:]))
        and bool(np.all(stored[1:] > stored[:-1]))
    ):
        return
    given = np.asarray(keys, dtype=np.dtypes.StringDType())
    if given.shape == stored.shape and bool((given == stored).all()):
        return
    missing = np.setdiff1d(given, stored)
    extra = np.setdiff1d(stored, given)
    if missing.size or extra.size:
        raise DatasetMismatchError(
            f"{where} keys differ from the dataset's: {missing.size} dataset keys not in the "
            f"cache (e.g. {missing[:5].tolist()}), {extra.size} cache keys not in the dataset "
            f"(e.g. {extra[:5].tolist()}); re-create the cache for this dataset"
        )
    if given.shape != stored.shape:
        raise DatasetMismatchError(
            f"{where} holds {stored.shape[0]} keys, the dataset lists {given.shape[0]} "
            "(some repeated); list each sample once"
        )
    first = int(np.argmax(given != stored))
    raise DatasetMismatchError(
        f"{where} holds the dataset's keys in another order (first difference at index "
        f"{first}: cache {stored[first]!r}, dataset {given[first]!r}); list the dataset in "
        "the cache's order (sorted keys)"
    )
