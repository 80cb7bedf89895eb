"""Errors raised by the logit cache: one base class, one subclass per problem.

Each subclass also derives from the builtin that fits, so callers that only know
the builtins (``FileNotFoundError``, ``ValueError``) still catch them. Messages say
what is wrong, the value seen, where, and the fix.
"""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error raised by ``storage``."""


class NotACacheError(CacheError, FileNotFoundError):
    """The path does not exist, or is not a logit cache (no manifest in its group)."""


class CacheLocationError(CacheError, OSError):
    """The cache's location cannot be reached: no fsspec backend for its URL, a wrong
    endpoint, missing or refused credentials."""


class SchemaVersionError(CacheError, ValueError):
    """The cache was written with a schema version this code does not read."""


class InvalidManifestError(CacheError, ValueError):
    """A manifest (or one of its parts) holds an impossible value, e.g. K > C."""


class ManifestMismatchError(CacheError, ValueError):
    """The cache's manifest differs from the one expected (other teacher, views, ...)."""


class DatasetMismatchError(CacheError, ValueError):
    """The dataset's keys, labels or fingerprint differ from those the cache was made from."""


class IncompleteCacheError(CacheError, RuntimeError):
    """Some (view, shard) pairs were never completely written; ``missing`` lists them."""

    def __init__(self, message: str, missing: list[tuple[int, int]] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])


class RecordError(CacheError, ValueError):
    """Records given to the writer have a wrong shape, dtype, range, or non-finite values."""


class RequestError(CacheError, ValueError):
    """A read or write asked for something outside the cache (view, shard, range, k)."""


class ShardAlreadyWrittenError(CacheError, FileExistsError):
    """A strict write was asked for a (view, shard) whose done bit is already set."""


class CorruptCacheError(CacheError, OSError):
    """Stored data is damaged: an array is missing or its metadata is unreadable."""


class CorruptChunkError(CorruptCacheError):
    """A chunk file is missing or cannot be decoded.

    Attributes:
        array: name of the array inside the cache group, e.g. ``"topk_logp"``.
        chunk: the chunk's key inside that array, e.g. ``"c/0/3/0"``.
    """

    def __init__(self, message: str, array: str, chunk: str) -> None:
        super().__init__(message)
        self.array = array
        self.chunk = chunk
