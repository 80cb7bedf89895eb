"""Create a cache and write it shard by shard: data first, the done bit last.

A (view, shard) write touches exactly one chunk of each array it writes and its own
``done[v, s]`` chunk, so shard writers in several processes need no lock. A writer
killed mid-shard leaves the done bit unset; the shard is rewritten on resume.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numcodecs
import numpy as np
import zarr

from storage import _integrity as integrity
from storage import location
from storage.errors import (
    DatasetMismatchError,
    ManifestMismatchError,
    NotACacheError,
    RecordError,
    RequestError,
    ShardAlreadyWrittenError,
)
from storage.labels import LabelCheck
from storage.manifest import Manifest
from storage.records import prepare_records
from storage.schema import (
    ATTR_MANIFEST,
    ATTR_SCHEMA_VERSION,
    COMPRESSORS,
    array_specs,
    codecs_for,
    default_compressor,
)

if TYPE_CHECKING:
    from storage.reader import CacheReader

logger = logging.getLogger(__name__)
# Chunks equal to the fill value must still be written: the reader treats a
# missing chunk of a done shard as damage (see integrity.py).
WRITE_CONFIG = {"write_empty_chunks": True}


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    # One pool per process: a forked child must not reuse its parent's (dead) threads.
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=8, thread_name_prefix="storage-write"))
    return _POOL[1]


def _put(array: zarr.Array, selection: tuple, data: np.ndarray) -> None:
    # One function for every write so tests can interrupt a writer between arrays.
    array[selection] = data


class CacheWriter:
    """Writes (view, shard) blocks of an existing cache. Get one from ``create``."""

    def __init__(
        self, path: location.PathOrLocation, group: zarr.Group, manifest: Manifest
    ) -> None:
        self.location = location.resolve(path)
        self.path = self.location.url
        self.manifest = manifest
        self._group = group
        self._arrays = {
            name: group[name].with_config(WRITE_CONFIG) for name in array_specs(manifest)
        }

    def __reduce__(self) -> tuple:
        # Pickles as "reopen this path" so Dask/multiprocessing workers get a live writer.
        return (open_writer, (self.location, self.manifest))

    def reader(self) -> CacheReader:
        """A reader of this same open store: read back what was written, opening nothing."""
        from storage.reader import CacheReader  # noqa: PLC0415 - reader and writer pair up

        return CacheReader(self.location, opened=(self.manifest, self._group))

    @property
    def num_shards(self) -> int:
        """S, the number of shards per view."""
        return self.manifest.num_shards

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Sample range [start, stop) of shard ``shard``."""
        if not 0 <= shard < self.num_shards:
            raise RequestError(
                f"shard {shard} is out of range for {self.path} (0..{self.num_shards - 1})"
            )
        size = self.manifest.shard_size
        return shard * size, min((shard + 1) * size, self.manifest.num_samples)

    def _check_view(self, view: int) -> None:
        if not 0 <= view < self.manifest.num_views:
            raise RequestError(
                f"view {view} is out of range for {self.path} (0..{self.manifest.num_views - 1})"
            )

    def is_done(self, view: int, shard: int) -> bool:
        """Whether shard ``shard`` of view ``view`` is completely written (read fresh)."""
        self._check_view(view)
        self.shard_range(shard)
        return bool(self._arrays["done"][view, shard])

    def missing(self) -> list[tuple[int, int]]:
        """(view, shard) pairs whose done bit is unset, in order."""
        done = integrity.read_done(self.location, self._arrays["done"])
        return [(int(v), int(s)) for v, s in np.argwhere(~done)]

    def record_bad_samples(
        self, keys: Sequence[str], reasons: Mapping[str, str] | None = None
    ) -> None:
        """List the keys of undecodable samples in the group attribute ``bad_samples``, and
        why each one failed (key -> reason) in ``bad_reasons``.

        Called once by the finishing step, after every shard is written (the per-shard
        truth is the ``bad`` array); outside the manifest, so it never changes identity.
        """
        self._group.update_attributes({
            "bad_samples": sorted(str(k) for k in keys),
            "bad_reasons": {str(k): str(v) for k, v in sorted((reasons or {}).items())},
        })  # fmt: skip

    def record_label_check(self, check: LabelCheck) -> None:
        """Store the pass's label agreement in the manifest (``label_check``).

        Called by the finishing step; a non-identity field, so the cache stays compatible
        with its config. A flagged check keeps every record: the cache is finished, and
        students decide whether to use it (``allow_label_mismatch``).
        """
        if not isinstance(check, LabelCheck):
            raise TypeError(f"check must be a storage.LabelCheck, got {type(check).__name__}")
        updated = dataclasses.replace(self.manifest, label_check=check)
        self._group.attrs[ATTR_MANIFEST] = updated.to_dict()
        self.manifest = updated

    def write_shard(
        self, view: int, shard: int, records: Mapping[str, np.ndarray], strict: bool = False
    ) -> bool:
        """Write one (view, shard) block, then set its done bit.

        Args:
            view: view index v in [0, V).
            shard: shard index s in [0, S); rows are ``shard_range(s)``, n = stop - start.
            records: format topk: ``topk_idx`` [n, K] int, ``topk_logp`` [n, K] float
                (log-softmax at T=1, descending); format full: ``logits`` [n, C] float;
                always ``lse`` [n, nT] float, ``gt_logit`` [n] float, ``crop`` [n, 4] int
                (top, left, h, w), ``flip`` [n] bool/uint8; optional ``bad`` [n] bool;
                ``hw`` [n, 2] int required when v == 0 (ignored otherwise).
            strict: raise instead of skipping a shard that is already done.

        Returns:
            True when written, False when skipped because the shard was already done.

        Raises:
            RequestError: view or shard out of range.
            RecordError: records of wrong names, shapes, dtypes or values (nothing written).
            ShardAlreadyWrittenError: ``strict`` and the shard is already done.
        """
        start, stop = self.shard_range(shard)
        self._check_view(view)
        where = f"view {view} shard {shard} (samples {start}:{stop}) of {self.path}"
        if self.is_done(view, shard):
            if strict:
                raise ShardAlreadyWrittenError(
                    f"{where} is already written; pass strict=False to skip done shards"
                )
            logger.debug("skipping %s: already done", where)
            return False
        labels = None
        if self.manifest.record_precision == "q8":
            labels = self._arrays["label"][start:stop]
        data = prepare_records(self.manifest, view, stop - start, records, where, labels)
        # Arrays are written concurrently (compression overlaps I/O), all of them
        # before the done bit.
        futures = [
            _pool().submit(
                _put,
                self._arrays[name],
                (slice(start, stop),) if name == "hw" else (view, slice(start, stop)),
                values,
            )
            for name, values in data.items()
        ]
        for future in futures:
            future.result()
        _put(self._arrays["done"], (view, shard), np.True_)
        logger.debug("wrote %s", where)
        return True


def _library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
    }


def _check_dataset(manifest: Manifest, keys: Sequence[str], labels: np.ndarray) -> tuple:
    if not isinstance(manifest, Manifest):
        raise TypeError(f"manifest must be a storage.Manifest, got {type(manifest).__name__}")
    keys = list(keys)
    keys_arr = np.asarray(keys, dtype=np.dtypes.StringDType())
    labels_arr = np.asarray(labels)
    n = manifest.num_samples
    if keys_arr.shape != (n,) or labels_arr.shape != (n,):
        raise RecordError(
            f"keys and labels must both have shape [{n}] (manifest num_samples), got "
            f"{list(keys_arr.shape)} and {list(labels_arr.shape)}"
        )
    if labels_arr.dtype.kind not in "iu":
        raise RecordError(f"labels must be integers, got dtype {labels_arr.dtype}")
    c = manifest.num_classes
    if n and (int(labels_arr.min()) < 0 or int(labels_arr.max()) >= c):
        raise RecordError(
            f"labels must be in [0, {c}) (teacher num_classes), got values in "
            f"[{int(labels_arr.min())}, {int(labels_arr.max())}]; check the dataset's classes"
        )
    if len(set(keys)) != n:  # a hash set: np.unique sorted 1.28 M strings in 2.5 s
        raise RecordError("sample keys must be unique; the dataset listing repeats a key")
    return keys_arr, labels_arr.astype(np.int32)


def create(
    path: location.PathOrLocation,
    manifest: Manifest,
    keys: Sequence[str],
    labels: np.ndarray,
    overwrite: bool = False,
    compressor: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> CacheWriter:
    """Create a cache (or reopen a compatible one to resume) and return its writer.

    Call it once before starting parallel shard writers (two first-time creates of one
    path race); the writers then call ``create`` again (it reopens) or ``open_writer``.
    ``check_create`` makes the same checks without writing anything.

    Args:
        path: local directory or fsspec URL of the cache group.
        manifest: what the cache holds; ``created_at`` and ``library_versions`` are
            filled in when empty.
        keys: sample keys [N], in cache order.
        labels: true classes [N] int in [0, C).
        overwrite: replace an existing cache (or an interrupted create) at ``path``.
        compressor: one of ``COMPRESSORS``; None picks ``"blosc-lz4"``, or ``"blosc-zstd"``
            for record precision q8 (``schema.default_compressor``, see README).
        storage_options: fsspec options for a URL's filesystem (endpoint, credentials).

    Returns:
        A ``CacheWriter``; on resume, done shards stay done.

    Raises:
        ManifestMismatchError: ``path`` holds a cache with an incompatible manifest.
        DatasetMismatchError: ``path`` holds a cache of other keys or labels.
        NotACacheError: ``path`` holds something that is not a cache (never overwritten
            unless it is a zarr group and ``overwrite`` is set).
        RecordError: keys/labels of the wrong length, duplicate keys, labels outside [0, C).
        SchemaVersionError: ``path`` holds a cache of another schema version.
    """
    compressor = compressor or default_compressor(manifest)
    if compressor not in COMPRESSORS:
        raise RequestError(
            f"unknown compressor {compressor!r}; choose one of {sorted(COMPRESSORS)}"
        )
    keys_arr, labels_arr = _check_dataset(manifest, keys, labels)
    path = location.resolve(path, storage_options)
    action = _create_action(path, overwrite)
    if action == "resume":
        writer = open_writer(path, manifest)
        _check_same_dataset(writer.path, writer._group, keys_arr, labels_arr)
        logger.info("resuming cache %s: %d (view, shard) left", writer.path, len(writer.missing()))
        return writer
    if action == "replace":
        logger.info("overwriting %s", os.fspath(path))
        location.remove(path)
    return _create_new(path, manifest, keys_arr, labels_arr, compressor)


def check_create(
    path: location.PathOrLocation,
    manifest: Manifest,
    keys: Sequence[str],
    labels: np.ndarray,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Make every check ``create`` makes before it writes, writing nothing.

    Lets a caller refuse a bad output (another cache, another dataset, a folder that is
    not a cache) before it starts any work.

    Returns:
        What ``create`` would do: ``"create"`` (nothing there, or an empty folder),
        ``"resume"`` (a compatible cache of the same samples) or ``"replace"`` (overwrite).

    Raises:
        CacheError: the errors of ``create``, for the same reasons.
    """
    keys_arr, labels_arr = _check_dataset(manifest, keys, labels)
    path = location.resolve(path, storage_options)
    action = _create_action(path, overwrite)
    if action == "resume":
        stored, group = location.read_manifest(path, mode="r")
        _check_compatible(path, stored, manifest)
        _check_same_dataset(os.fspath(path), group, keys_arr, labels_arr)
    return action


def _create_action(path: location.Location, overwrite: bool) -> str:
    """ "create", "resume" or "replace" for what is at ``path``; refuses what is no cache."""
    kind, _ = location.probe(path)
    if kind == "other":
        raise NotACacheError(
            f"{os.fspath(path)} exists and is not a zarr cache; refusing to touch it. "
            "Pick another path or remove it yourself"
        )
    if kind == "zarr" and not overwrite:
        raise NotACacheError(
            f"{os.fspath(path)} is a zarr group without a pld_cache manifest (not a cache, or "
            "its creation was interrupted); pass overwrite=True to replace it"
        )
    if kind == "cache" and not overwrite:
        return "resume"
    return "replace" if kind in ("cache", "zarr") else "create"


def _create_new(
    path: location.Location,
    manifest: Manifest,
    keys: np.ndarray,
    labels: np.ndarray,
    compressor: str,
) -> CacheWriter:
    filled = Manifest.from_dict(
        {
            **manifest.to_dict(),
            "created_at": manifest.created_at
            or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "library_versions": {**_library_versions(), **manifest.library_versions},
        }
    )
    group = location.open_group(path, mode="w-")
    group.attrs[ATTR_SCHEMA_VERSION] = filled.schema_version
    for spec in array_specs(filled).values():
        group.create_array(
            spec.name,
            shape=spec.shape,
            chunks=spec.chunks,
            dtype=spec.dtype,
            fill_value=spec.fill_value,
            compressors=codecs_for(spec, compressor),
            dimension_names=spec.dims,
            attributes={"description": spec.doc},
            config=WRITE_CONFIG,
        )
    group["key"].with_config(WRITE_CONFIG)[:] = keys
    group["label"].with_config(WRITE_CONFIG)[:] = labels
    # The manifest goes last: a group without it is an interrupted create, not a cache.
    group.attrs[ATTR_MANIFEST] = filled.to_dict()
    logger.info(
        "created cache %s: V=%d N=%d S=%d format=%s k=%d",
        path,
        filled.num_views,
        filled.num_samples,
        filled.num_shards,
        filled.format,
        filled.k,
    )
    return CacheWriter(path, group, filled)


def open_writer(
    path: location.PathOrLocation,
    manifest: Manifest | None = None,
    storage_options: dict[str, Any] | None = None,
) -> CacheWriter:
    """Reopen an existing cache for writing (e.g. in a shard task on another worker).

    Args:
        path: the cache's path, URL or ``Location``.
        manifest: when given, the stored manifest must be compatible with it.
        storage_options: fsspec options for a URL's filesystem.

    Raises:
        NotACacheError, SchemaVersionError: see ``open_cache``.
        ManifestMismatchError: ``manifest`` differs from the stored one (listed).
    """
    path = location.resolve(path, storage_options)
    stored, group = location.read_manifest(path, mode="r+")
    if manifest is not None:
        _check_compatible(path, stored, manifest)
    return CacheWriter(path, group, stored)


def _check_compatible(path: location.Location, stored: Manifest, given: Manifest) -> None:
    if not stored.compatible_with(given):
        raise ManifestMismatchError(
            f"{os.fspath(path)} holds a cache with another manifest; nothing was changed. "
            "Differences (stored != given): "
            + "; ".join(stored.diff(given))
            + ". Use another path, or overwrite=True to replace it"
        )


def _check_same_dataset(
    where: str, group: zarr.Group, keys: np.ndarray, labels: np.ndarray
) -> None:
    stored_keys = group["key"][...]
    stored_labels = group["label"][...]
    if not np.array_equal(stored_keys, keys) or not np.array_equal(stored_labels, labels):
        raise DatasetMismatchError(
            f"{where} was created from other sample keys or labels than the ones "
            "given; nothing was changed. Use another path, or overwrite=True to replace it"
        )
