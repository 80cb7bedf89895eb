"""Helpers for the storage tests: tiny seeded caches, plain-zarr reads, a directory hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

import storage
from storage.synthetic import make_records

N, C, K, V, S = 100, 10, 5, 2, 16


def keys_for(labels: np.ndarray) -> list[str]:
    """Sorted relative paths, like an ImageFolder listing."""
    return [f"class{label:02d}/img{i:04d}.png" for i, label in enumerate(labels)]


def write_cache(path, manifest, labels, skip=(), compressor=None):
    """Write every (view, shard) of a cache except those in ``skip``; return the writer."""
    writer = storage.create(path, manifest, keys_for(labels), labels, compressor=compressor)
    for v in range(manifest.num_views):
        for s in range(manifest.num_shards):
            if (v, s) not in skip:
                a, b = writer.shard_range(s)
                writer.write_shard(v, s, make_records(manifest, v, a, b, labels))
    return writer


def tree_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes under ``root``."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            digest.update(str(full.relative_to(root)).encode())
            digest.update(full.read_bytes())
    return digest.hexdigest()


def zarr_arrays(path) -> dict[str, np.ndarray]:
    """Every array of a zarr group as numpy, read with plain zarr."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(array[...]) for name, array in group.arrays()}


def as_schema_version_1(path) -> None:
    """Rewrite a new fp16 cache's attributes to what the version-1 writer wrote (plain zarr).

    Version 1 differs from a version-2 fp16 cache in two attributes only: the group's and
    the manifest's ``schema_version`` is 1 and the manifest has no ``record_precision``.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    manifest = dict(group.attrs["pld_cache"])
    assert manifest.pop("record_precision") == "fp16"
    manifest["schema_version"] = 1
    group.attrs["pld_cache"] = manifest
    group.attrs["schema_version"] = 1
