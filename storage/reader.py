"""Open a cache, check it against what the caller expects, and load views into memory.

A view (or a shard-aligned range of one) is read whole into a ``ViewSlab``; the next
one can be read in a background thread meanwhile (``prefetch``), so memory holds
about two slabs. A view larger than memory is read as shard ranges (``iter_view``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from storage import _checks as checks
from storage import _integrity as integrity
from storage import location, q8_layout
from storage.errors import (
    CorruptCacheError,
    DatasetMismatchError,
    IncompleteCacheError,
    ManifestMismatchError,
    RequestError,
)
from storage.manifest import Manifest
from storage.schema import array_specs, per_view_arrays
from storage.slab import ViewSlab, topk_from_logits

logger = logging.getLogger(__name__)


def open_cache(
    path: location.PathOrLocation, storage_options: dict[str, Any] | None = None
) -> CacheReader:
    """Open a cache for reading.

    Args:
        path: a local directory, an fsspec URL (``s3://bucket/cache``) or a ``Location``.
        storage_options: fsspec options for the URL's filesystem (endpoint, credentials).

    Raises:
        NotACacheError: nothing at ``path``, or not a cache.
        SchemaVersionError: written with another schema version.
        CorruptCacheError: an array is missing or has the wrong shape or dtype.
        CacheLocationError: the URL's store cannot be reached (backend, endpoint, keys).
    """
    return CacheReader(path, storage_options)


def _missing_text(missing: Sequence[tuple[int, int]], limit: int = 20) -> str:
    shown = ", ".join(f"({v}, {s})" for v, s in missing[:limit])
    more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
    return f"{len(missing)} (view, shard) not written: {shown}{more}"


class CacheReader:
    """A cache opened for reading. Cheap to open; data is read by ``load_view``."""

    def __init__(
        self,
        path: location.PathOrLocation,
        storage_options: dict[str, Any] | None = None,
        *,
        opened: tuple[Manifest, Any] | None = None,
    ) -> None:
        """`opened`: the (manifest, zarr group) of a store already open (a writer's), so
        reading it opens nothing more."""
        self.location = location.resolve(path, storage_options)
        self.path = self.location.url
        if opened is None:
            opened = location.read_manifest(self.location, mode="r")
        self.manifest, self._group = opened
        self._arrays: dict[str, Any] = {}
        for name, spec in array_specs(self.manifest).items():
            try:
                array = self._group[name]
            except KeyError as exc:
                raise CorruptCacheError(
                    f"{self.path}: array '{name}' is missing; the cache is damaged, rebuild it"
                ) from exc
            dtype_ok = spec.dtype is str or array.dtype == np.dtype(spec.dtype)
            if tuple(array.shape) != spec.shape or array.chunks != spec.chunks or not dtype_ok:
                raise CorruptCacheError(
                    f"{self.path}: array '{name}' has shape {array.shape} chunks "
                    f"{array.chunks} dtype {array.dtype}; the manifest implies {spec.shape} "
                    f"chunks {spec.chunks} dtype {spec.dtype}. The cache is damaged, rebuild it"
                )
            self._arrays[name] = array
        self._keys: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._pool: ThreadPoolExecutor | None = None

    def __reduce__(self) -> tuple:
        return (open_cache, (self.location,))

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the prefetch thread (pending prefetches finish first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- shape of the cache ----------------------------------------------------------
    num_samples = property(lambda self: self.manifest.num_samples, doc="N")
    num_views = property(lambda self: self.manifest.num_views, doc="V")
    num_classes = property(lambda self: self.manifest.num_classes, doc="C")
    k = property(lambda self: self.manifest.k, doc="K (C for format full)")
    format = property(lambda self: self.manifest.format, doc='"topk" or "full"')
    num_shards = property(lambda self: self.manifest.num_shards, doc="S, shards per view")
    shard_size = property(lambda self: self.manifest.shard_size, doc="samples per shard")
    temperatures = property(lambda self: self.manifest.temperatures, doc="lse columns")

    def _read_static(self, name: str) -> np.ndarray:
        shards = range(self.num_shards)
        integrity.check_chunks_exist(self.location, name, self._arrays[name], None, shards)
        return integrity.read_checked(
            self.location, name, self._arrays[name], None, 0, self.num_samples, self.shard_size
        )

    @property
    def keys(self) -> np.ndarray:
        """Sample keys [N] (numpy StringDType), in cache order."""
        if self._keys is None:
            self._keys = self._read_static("key")
        return self._keys

    @property
    def labels(self) -> np.ndarray:
        """True classes [N] int32."""
        if self._labels is None:
            self._labels = self._read_static("label")
        return self._labels

    def hw(self) -> np.ndarray:
        """Source image (height, width) [N, 2] int32; needs view 0 complete."""
        missing = [(v, s) for v, s in self.missing() if v == 0]
        if missing:
            raise IncompleteCacheError(
                f"{self.path}: hw needs view 0; " + _missing_text(missing), missing
            )
        return self._read_static("hw")

    def missing(self) -> list[tuple[int, int]]:
        """(view, shard) pairs not completely written, in order."""
        done = integrity.read_done(self.location, self._arrays["done"])
        return [(int(v), int(s)) for v, s in np.argwhere(~done)]

    def bad_samples(self) -> list[str]:
        """Keys listed as undecodable when the pass finished (empty before that)."""
        return list(self._group.attrs.get("bad_samples", []))

    def bad_reasons(self) -> dict[str, str]:
        """Why each undecodable sample failed, key -> reason, as the pass's finishing step
        found it (empty before that, and for caches written before reasons were kept)."""
        return dict(self._group.attrs.get("bad_reasons", {}))

    def bad_mask(self) -> np.ndarray:
        """[V, N] bool: True where the image could not be decoded (False where unwritten)."""
        return np.stack(
            [
                integrity.read_checked(
                    self.location,
                    "bad",
                    self._arrays["bad"],
                    v,
                    0,
                    self.num_samples,
                    self.shard_size,
                )
                for v in range(self.num_views)
            ]
        )

    # -- checks ------------------------------------------------------------------------
    def validate(
        self,
        expect: dict[str, Any] | Manifest | None = None,
        dataset_keys: Sequence[str] | None = None,
        dataset_fingerprint: str | None = None,
        require_complete: bool = True,
    ) -> None:
        """Check that this cache is the one the caller needs.

        Args:
            expect: manifest field paths to expected values, e.g.
                ``{"teacher.name": "resnet50", "views.mode": "replay", "num_classes": 1000}``
                (derived ``num_classes``, ``num_views``, ``num_shards`` accepted), or a
                whole ``Manifest`` whose identity fields must match.
            dataset_keys: the dataset's sample keys [N] in index order.
            dataset_fingerprint: ``fingerprint(keys, sizes)`` of the dataset.
            require_complete: every (view, shard) must be written.

        Raises:
            ManifestMismatchError: a manifest field differs (all differences listed).
            DatasetMismatchError: fingerprint or keys differ (missing/extra keys listed).
            IncompleteCacheError: some (view, shard) are not written (listed).
        """
        if isinstance(expect, Manifest):
            diffs = [f"{d} (cache != expected)" for d in self.manifest.diff(expect)]
        else:
            diffs = checks.expectation_diffs(self.manifest, expect or {})
        if diffs:
            raise ManifestMismatchError(
                f"{self.path} does not match what was expected: "
                + "; ".join(diffs)
                + ". Re-create the cache for this configuration, or point to the right cache"
            )
        if (
            dataset_fingerprint is not None
            and dataset_fingerprint != self.manifest.dataset_fingerprint
        ):
            raise DatasetMismatchError(
                f"{self.path} was made from another dataset: fingerprint "
                f"{self.manifest.dataset_fingerprint[:16]}... != {dataset_fingerprint[:16]}... "
                "(sorted keys and file sizes differ); re-create the cache for this dataset"
            )
        if dataset_keys is not None:
            checks.check_keys(
                self.path, self.keys, dataset_keys, same_set=dataset_fingerprint is not None
            )
        if require_complete:
            missing = self.missing()
            if missing:
                raise IncompleteCacheError(
                    f"{self.path} is incomplete: {_missing_text(missing)}; resume the cache "
                    "flow to finish it",
                    missing,
                )

    # -- reading views -----------------------------------------------------------------
    def _check_range(self, view: int, start: int, stop: int | None) -> tuple[int, int]:
        if not 0 <= view < self.num_views:
            raise RequestError(
                f"view {view} is out of range for {self.path} (0..{self.num_views - 1})"
            )
        stop = self.num_samples if stop is None else stop
        if not 0 <= start < stop <= self.num_samples:
            raise RequestError(
                f"sample range [{start}, {stop}) is not within "
                f"[0, {self.num_samples}) of {self.path}"
            )
        return start, stop

    def load_view(
        self, view: int, start: int = 0, stop: int | None = None, k: int | None = None
    ) -> ViewSlab:
        """Read samples [start, stop) of one view into memory.

        Args:
            view: view index v in [0, V).
            start: first sample of the range (default 0). Shard-aligned ranges read no
                chunk twice; others work too.
            stop: end of the range, exclusive (default N: the whole view).
            k: keep the top k <= K classes (format topk), or compute the top k from the
                dense logits (format full); None keeps what is stored.

        Returns:
            A ``ViewSlab`` of stop - start rows.

        Raises:
            RequestError: view, range or k out of bounds.
            IncompleteCacheError: a shard in the range is not written (listed).
            CorruptChunkError: a chunk is missing or undecodable (array and key named).
        """
        start, stop = self._check_range(view, start, stop)
        if k is not None and not 1 <= k <= self.k:
            raise RequestError(
                f"k={k} is not available from {self.path}: it holds "
                f"{self.format} with K={self.k}; pick 1 <= k <= {self.k}"
            )
        size = self.shard_size
        shards = list(range(start // size, -(-stop // size)))
        done = integrity.read_done(self.location, self._arrays["done"], view, shards)
        missing = [(view, s) for s, ok in zip(shards, done, strict=True) if not ok]
        if missing:
            raise IncompleteCacheError(
                f"{self.path}: view {view} samples [{start}, {stop}) are incomplete: "
                f"{_missing_text(missing)}; resume the cache flow to finish it",
                missing,
            )
        data = {}
        for name in per_view_arrays(self.manifest):
            array = self._arrays[name]
            integrity.check_chunks_exist(self.location, name, array, view, shards)
            data[name] = integrity.read_checked(self.location, name, array, view, start, stop, size)
        labels = self.labels[start:stop]
        if self.manifest.record_precision == "q8":  # float32 log-probs, lse(1) = 0, int32 boxes
            version, temps = self.manifest.schema_version, self.temperatures
            q8_layout.decode(version, temps, data, np.asarray(labels))
            data["crop"] = data["crop"].astype(np.int32)
        slab = ViewSlab(
            view=view,
            start=start,
            topk_idx=data.get("topk_idx"),
            topk_logp=data.get("topk_logp"),
            logits=data.get("logits"),
            lse=data["lse"],
            gt_logit=data["gt_logit"],
            crop=data["crop"],
            flip=data["flip"],
            label=labels,
            temperatures=self.temperatures,
            bad=data["bad"],
        )
        return self._truncate(slab, k)

    def _truncate(self, slab: ViewSlab, k: int | None) -> ViewSlab:
        if k is None:
            return slab
        if slab.logits is not None:
            temps = list(self.temperatures)
            # The teacher's own T=1 logsumexp is exact; the float16 logits are not.
            lse_t1 = slab.lse[:, temps.index(1.0)] if 1.0 in temps else None
            slab.topk_idx, slab.topk_logp = topk_from_logits(slab.logits, k, lse_t1)
            slab.logits = None
        elif k < slab.topk_idx.shape[1]:
            slab.topk_idx = np.ascontiguousarray(slab.topk_idx[:, :k])
            slab.topk_logp = np.ascontiguousarray(slab.topk_logp[:, :k])
        return slab

    def prefetch(self, view: int, **kwargs: Any) -> Future:
        """Start ``load_view(view, **kwargs)`` in a background thread.

        Keep at most one prefetch outstanding: memory then holds the slab in use plus
        the one being read (about two views).

        Returns:
            A ``concurrent.futures.Future`` whose ``result()`` is the ``ViewSlab``
            (or raises what ``load_view`` raised).
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage-prefetch")
        return self._pool.submit(self.load_view, view, **kwargs)

    def prefetch_index(self) -> Future:
        """Start reading, in the background, what `validate` and a run's checks read: the
        keys, labels, bad mask and done bits (a run lists its image folder meanwhile).

        Returns:
            A ``concurrent.futures.Future`` done when they are in memory.
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage-prefetch")
        return self._pool.submit(lambda: (self.keys, self.labels, self.bad_mask(), self.missing()))

    def shard_ranges(self, max_records: int | None = None) -> list[tuple[int, int]]:
        """Split [0, N) into shard-aligned ranges of at most ``max_records`` (>= 1 shard)."""
        size = self.shard_size
        step = self.num_samples if max_records is None else max(size, max_records // size * size)
        return [(a, min(a + step, self.num_samples)) for a in range(0, self.num_samples, step)]

    def iter_view(
        self, view: int, max_records: int | None = None, k: int | None = None
    ) -> Iterator[ViewSlab]:
        """Yield one view as slabs of at most ``max_records`` samples, shard-aligned.

        For a view larger than memory: the next range is read in the background while
        the current one is used, so memory holds about two ranges.
        """
        ranges = self.shard_ranges(max_records)
        pending = self.prefetch(view, start=ranges[0][0], stop=ranges[0][1], k=k)
        for i in range(len(ranges)):
            slab = pending.result()
            if i + 1 < len(ranges):
                a, b = ranges[i + 1]
                pending = self.prefetch(view, start=a, stop=b, k=k)
            yield slab
