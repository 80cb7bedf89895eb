"""Detect damaged chunks and name them: missing files of done shards, undecodable bytes.

Zarr reads a missing chunk as its fill value without complaint, so before reading a
done shard the reader checks that every chunk file it needs exists (one listing per
array). A chunk that exists but fails to decode (crc32c mismatch, truncated file) is
found by re-reading chunk by chunk after the fast whole-range read failed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import zarr

from storage import location
from storage.errors import CorruptChunkError

# Above this many shards one listing of the whole view beats one listing per shard.
PER_SHARD_LISTING_MAX = 4


def chunk_key(array: zarr.Array, coords: Sequence[int]) -> str:
    """The key of the chunk at ``coords`` inside ``array``, e.g. ``"c/0/3/0"``."""
    return array.metadata.encode_chunk_key(tuple(int(c) for c in coords))


def _coords(array: zarr.Array, view: int | None, shard: int) -> tuple[int, ...]:
    # Chunks span whole trailing dims, so trailing chunk coordinates are 0.
    lead = (shard,) if view is None else (view, shard)
    return lead + (0,) * (array.ndim - len(lead))


def check_chunks_exist(
    path: str | os.PathLike,
    name: str,
    array: zarr.Array,
    view: int | None,
    shards: Sequence[int],
) -> None:
    """Raise if a chunk of ``array`` for (view, shard) in ``shards`` has no file.

    Args:
        path: the cache's path or URL.
        name: array name within the cache group.
        array: the opened array; chunked (1, shard_size, ...) or (shard_size, ...).
        view: view index for [V, N, ...] arrays, None for [N, ...] arrays.
        shards: shard indices that must be present (their done bit is set).

    Raises:
        CorruptChunkError: naming the array and the first missing chunk key.
    """
    shards = list(shards)
    if not shards:
        return
    head = "c" if view is None else f"c/{view}"
    # Object stores answer a listing per request: one prefix listing beats one per shard.
    if len(shards) <= PER_SHARD_LISTING_MAX and not location.is_remote(path):
        found: set[str] = set()
        for shard in shards:
            found |= location.list_chunk_files(path, name, f"{head}/{shard}")
    else:
        found = location.list_chunk_files(path, name, head)
    for shard in shards:
        key = chunk_key(array, _coords(array, view, shard))
        if key not in found:
            where = f"view {view} shard {shard}" if view is not None else f"shard {shard}"
            raise CorruptChunkError(
                f"{os.fspath(path)}: chunk file {name}/{key} ({where}) is missing although the "
                f"shard is marked done; the cache is damaged. Re-create this shard: unset "
                f"done[{view}, {shard}] and resume, or rebuild the cache",
                array=name,
                chunk=key,
            )


def read_checked(
    path: str | os.PathLike,
    name: str,
    array: zarr.Array,
    view: int | None,
    start: int,
    stop: int,
    shard_size: int,
) -> np.ndarray:
    """Read ``array[view, start:stop]`` (or ``array[start:stop]``), naming any bad chunk.

    Returns:
        The values [stop - start, ...] in the array's dtype.

    Raises:
        CorruptChunkError: a chunk in the range cannot be decoded (array and key named).
    """
    lead = () if view is None else (view,)
    try:
        return array[(*lead, slice(start, stop))]
    except Exception as exc:  # noqa: BLE001 - any codec failure; located below
        first = exc
    # Slow path, only after a failure: find the chunk that does not decode.
    for shard in range(start // shard_size, -(-stop // shard_size)):
        lo, hi = shard * shard_size, min((shard + 1) * shard_size, array.shape[len(lead)])
        try:
            array[(*lead, slice(lo, hi))]
        except Exception as exc:
            key = chunk_key(array, _coords(array, view, shard))
            raise CorruptChunkError(
                f"{os.fspath(path)}: chunk {name}/{key} cannot be decoded "
                f"({type(exc).__name__}: {exc}); the file is damaged. Re-create this shard "
                "(unset its done bit and resume) or rebuild the cache",
                array=name,
                chunk=key,
            ) from exc
    raise first


def read_done(
    path: str | os.PathLike,
    done: zarr.Array,
    view: int | None = None,
    shards: Sequence[int] | None = None,
) -> np.ndarray:
    """Done bits: all [V, S], or those of ``shards`` of ``view`` [len(shards)].

    Raises:
        CorruptChunkError: a done chunk cannot be decoded (key named).
    """
    if view is None:
        selection: tuple = (slice(None), slice(None))
        cells = [(v, s) for v in range(done.shape[0]) for s in range(done.shape[1])]
    else:
        shards = list(shards if shards is not None else range(done.shape[1]))
        selection = (view, slice(shards[0], shards[-1] + 1))
        cells = [(view, s) for s in shards]
    try:
        return done[selection]
    except Exception as exc:  # noqa: BLE001 - located below
        first = exc
    for cell in cells:
        try:
            done[cell]
        except Exception as exc:
            key = chunk_key(done, cell)
            raise CorruptChunkError(
                f"{os.fspath(path)}: chunk done/{key} cannot be decoded "
                f"({type(exc).__name__}: {exc}); delete that file to mark shard {cell} "
                "not done, then resume",
                array="done",
                chunk=key,
            ) from exc
    raise first
