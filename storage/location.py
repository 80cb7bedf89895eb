"""Where a cache lives: local paths or fsspec URLs, probed and listed through fsspec.

Zarr does the array I/O; this module answers the questions zarr does not: is this
path a cache, an unrelated directory or nothing; which chunk files exist; how many
bytes the cache takes on disk.
"""

from __future__ import annotations

import json
import os
from typing import Any

import fsspec
import zarr

from storage.errors import InvalidManifestError, NotACacheError, SchemaVersionError
from storage.manifest import SCHEMA_VERSION, Manifest
from storage.schema import ATTR_MANIFEST, ATTR_SCHEMA_VERSION


def _fs(path: str | os.PathLike) -> tuple[Any, str]:
    fs, root = fsspec.core.url_to_fs(os.fspath(path))
    return fs, root.rstrip("/")


def probe(path: str | os.PathLike) -> tuple[str, dict]:
    """Classify a path without changing it.

    Returns:
        (kind, group_attributes) where kind is ``"absent"`` (nothing there),
        ``"empty"`` (an empty directory), ``"cache"`` (a zarr group with a manifest),
        ``"zarr"`` (a zarr node without a manifest, e.g. an interrupted create) or
        ``"other"`` (a file or a non-empty directory that is not zarr).
    """
    fs, root = _fs(path)
    if not fs.exists(root):
        return "absent", {}
    if not fs.isdir(root):
        return "other", {}
    meta_path = f"{root}/zarr.json"
    if not fs.exists(meta_path):
        return ("empty", {}) if not fs.ls(root) else ("other", {})
    try:
        meta = json.loads(fs.cat_file(meta_path))
    except (ValueError, OSError):
        return "zarr", {}
    attrs = meta.get("attributes") or {}
    if meta.get("node_type") == "group" and ATTR_MANIFEST in attrs:
        return "cache", attrs
    return "zarr", attrs


def remove(path: str | os.PathLike) -> None:
    """Delete a directory tree (used only by ``create(..., overwrite=True)``)."""
    fs, root = _fs(path)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def open_group(path: str | os.PathLike, mode: str) -> zarr.Group:
    """Open the zarr v3 group at a local path or fsspec URL."""
    fs, root = _fs(path)
    # file:// URLs go to zarr's LocalStore (atomic writes, creates directories).
    target = root if "file" in fs.protocol else os.fspath(path)
    return zarr.open_group(target, mode=mode, zarr_format=3)


def list_chunk_files(path: str | os.PathLike, array: str, prefix: str) -> set[str]:
    """Chunk keys (relative to the array, e.g. ``"c/0/3/0"``) stored under ``prefix``.

    ``prefix`` is a chunk-key prefix such as ``"c/0"`` (all chunks of view 0).
    Temporary ``*.partial`` files of interrupted writes are not chunks.
    """
    fs, root = _fs(path)
    base = f"{root}/{array}/"
    found = fs.find(base + prefix)
    return {p[len(base) :] for p in found if p.startswith(base) and not p.endswith(".partial")}


def disk_bytes(path: str | os.PathLike) -> int:
    """Total bytes of every file under the cache path."""
    fs, root = _fs(path)
    return int(fs.du(root, total=True))


def read_manifest(path: str | os.PathLike, mode: str = "r") -> tuple[Manifest, zarr.Group]:
    """Open a cache's group and parse its manifest.

    Raises:
        NotACacheError: nothing at ``path``, or not a zarr group holding a manifest.
        SchemaVersionError: the cache was written with another schema version.
    """
    kind, attrs = probe(path)
    where = os.fspath(path)
    if kind == "absent":
        raise NotACacheError(f"no cache at {where}: the path does not exist")
    if kind in ("empty", "other"):
        raise NotACacheError(f"{where} is not a cache: it holds no zarr group (zarr.json)")
    if kind == "zarr":
        raise NotACacheError(
            f"{where} is a zarr node without a pld_cache manifest: not a logit cache, or "
            "its creation was interrupted (re-create it with overwrite=True)"
        )
    version = attrs.get(ATTR_SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where} has schema version {version!r}; this code reads version "
            f"{SCHEMA_VERSION}. Use the pld-pipeline version that wrote it, or re-create it"
        )
    try:
        manifest = Manifest.from_dict(attrs[ATTR_MANIFEST])
    except InvalidManifestError as exc:
        raise NotACacheError(f"{where} holds an unreadable manifest: {exc}") from exc
    return manifest, open_group(path, mode=mode)
