"""Where a cache lives: local paths or fsspec URLs, probed and listed through fsspec.

Zarr does the array I/O; this module answers the questions zarr does not: is this
path a cache, an unrelated directory or nothing; which chunk files exist; how many
bytes the cache takes on disk. Object stores (``s3://``, ``gs://``) go through their
fsspec backend (``s3fs``: ``pip install "pld-pipeline[s3]"``); endpoint and credentials
come from the backend's usual environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
...) or from ``storage_options``, passed through to fsspec as given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import zarr

from storage.errors import (
    CacheLocationError,
    InvalidManifestError,
    NotACacheError,
    SchemaVersionError,
)
from storage.manifest import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, Manifest
from storage.schema import ATTR_MANIFEST, ATTR_SCHEMA_VERSION


@dataclass(frozen=True)
class Location:
    """A cache's URL (or local path) and the fsspec options that reach it.

    Picklable, so a shard task on another machine reopens the same store. It is
    ``os.PathLike`` (its URL), so messages that print ``os.fspath(path)`` name it.
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url


PathOrLocation = str | os.PathLike | Location


def resolve(path: PathOrLocation, storage_options: Mapping[str, Any] | None = None) -> Location:
    """A ``Location`` for ``path``; ``storage_options`` (if given) replace a Location's own."""
    if isinstance(path, Location):
        return path if storage_options is None else Location(path.url, dict(storage_options))
    return Location(os.fspath(path), dict(storage_options or {}))


def is_remote(path: PathOrLocation) -> bool:
    """True for URLs that fsspec does not map to the local filesystem."""
    fs, _ = _fs(path)
    return "file" not in fs.protocol


def _fs(path: PathOrLocation) -> tuple[Any, str]:
    where = resolve(path)
    try:
        fs, root = fsspec.core.url_to_fs(where.url, **dict(where.options))
    except ImportError as exc:
        protocol = where.url.split("://", 1)[0]
        raise CacheLocationError(
            f"{where.url}: no fsspec backend for {protocol}:// is installed ({exc}); install it, "
            'e.g. pip install "pld-pipeline[s3]" for s3://'
        ) from exc
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise CacheLocationError(
            f"{where.url}: {exc}; use a local path or a URL fsspec knows (s3://, gs://, file://)"
        ) from exc
    # Object-store listings are cached per filesystem instance; a cache is written by
    # other processes, so every question here must see the store as it is now.
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def probe(path: PathOrLocation) -> tuple[str, dict]:
    """Classify a path without changing it.

    Returns:
        (kind, group_attributes) where kind is ``"absent"`` (nothing there),
        ``"empty"`` (an empty directory), ``"cache"`` (a zarr group with a manifest),
        ``"zarr"`` (a zarr node without a manifest, e.g. an interrupted create) or
        ``"other"`` (a file or a non-empty directory that is not zarr).
    """
    fs, root = _fs(path)
    try:
        exists = fs.exists(root)
    except Exception as exc:  # any backend's auth/endpoint failure
        raise CacheLocationError(
            f"cannot reach {os.fspath(path)}: {type(exc).__name__}: {exc}. Check the endpoint "
            "and credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY for "
            "s3://, or storage_options) and that the bucket exists"
        ) from exc
    if not exists:
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


def remove(path: PathOrLocation) -> None:
    """Delete a directory tree (used only by ``create(..., overwrite=True)``)."""
    fs, root = _fs(path)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def open_group(path: PathOrLocation, mode: str) -> zarr.Group:
    """Open the zarr v3 group at a local path or fsspec URL."""
    where = resolve(path)
    fs, root = _fs(where)
    if "file" in fs.protocol:
        # file:// URLs go to zarr's LocalStore (atomic writes, creates directories).
        return zarr.open_group(root, mode=mode, zarr_format=3)
    return zarr.open_group(
        where.url, mode=mode, zarr_format=3, storage_options=dict(where.options) or None
    )


def list_chunk_files(path: PathOrLocation, array: str, prefix: str) -> set[str]:
    """Chunk keys (relative to the array, e.g. ``"c/0/3/0"``) stored under ``prefix``.

    ``prefix`` is a chunk-key prefix such as ``"c/0"`` (all chunks of view 0).
    Temporary ``*.partial`` files of interrupted writes are not chunks.
    """
    fs, root = _fs(path)
    base = f"{root}/{array}/"
    found = fs.find(base + prefix)
    return {p[len(base) :] for p in found if p.startswith(base) and not p.endswith(".partial")}


def disk_bytes(path: PathOrLocation) -> int:
    """Total bytes of every file under the cache path."""
    fs, root = _fs(path)
    return int(fs.du(root, total=True))


def read_manifest(path: PathOrLocation, mode: str = "r") -> tuple[Manifest, zarr.Group]:
    """Open a cache's group and parse its manifest.

    Raises:
        NotACacheError: nothing at ``path``, or not a zarr group holding a manifest.
        SchemaVersionError: the cache was written with another schema version.
    """
    kind, attrs = probe(path)
    where = os.fspath(path)
    if kind == "absent":
        raise NotACacheError(
            f"no cache at {where}: the path does not exist; give the path of a cache a "
            "teacher pass wrote (its folder holds zarr.json)"
        )
    if kind in ("empty", "other"):
        raise NotACacheError(
            f"{where} is not a cache: it holds no zarr group (zarr.json); give the path of a "
            "cache a teacher pass wrote"
        )
    if kind == "zarr":
        raise NotACacheError(
            f"{where} is a zarr node without a pld_cache manifest: not a logit cache, or "
            "its creation was interrupted (re-create it with overwrite=True)"
        )
    version = attrs.get(ATTR_SCHEMA_VERSION)
    if version not in READABLE_SCHEMA_VERSIONS:
        raise SchemaVersionError(
            f"{where} has schema version {version!r}; this code reads versions "
            f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))} (it writes {SCHEMA_VERSION}). "
            "Use the pld-pipeline version that wrote it, or re-create it"
        )
    try:
        manifest = Manifest.from_dict(attrs[ATTR_MANIFEST])
    except InvalidManifestError as exc:
        raise NotACacheError(f"{where} holds an unreadable manifest: {exc}") from exc
    return manifest, open_group(path, mode=mode)
