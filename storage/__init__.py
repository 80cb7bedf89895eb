"""The logit cache: a chunked Zarr v3 store of teacher outputs per (view, sample).

Public API (see storage/README.md for the on-disk format):
``create`` / ``open_writer`` -> ``CacheWriter.write_shard``; ``open_cache`` ->
``CacheReader.validate`` / ``load_view`` / ``prefetch`` / ``iter_view``;
``inspect``; the ``Manifest`` dataclasses and ``fingerprint``; the errors.
"""

from storage.errors import (
    CacheError,
    CacheLocationError,
    CorruptCacheError,
    CorruptChunkError,
    DatasetMismatchError,
    IncompleteCacheError,
    InvalidManifestError,
    ManifestMismatchError,
    NotACacheError,
    RecordError,
    RequestError,
    SchemaVersionError,
    ShardAlreadyWrittenError,
)
from storage.location import Location
from storage.manifest import SCHEMA_VERSION, Manifest, TeacherInfo, ViewInfo, fingerprint
from storage.reader import CacheReader, open_cache
from storage.schema import COMPRESSORS, DEFAULT_COMPRESSOR, DEFAULT_SHARD_SIZE
from storage.slab import ViewSlab
from storage.summary import CacheSummary, inspect, summarize
from storage.writer import CacheWriter, create, open_writer

__all__ = [
    "COMPRESSORS",
    "DEFAULT_COMPRESSOR",
    "DEFAULT_SHARD_SIZE",
    "SCHEMA_VERSION",
    "CacheError",
    "CacheLocationError",
    "CacheReader",
    "CacheSummary",
    "CacheWriter",
    "CorruptCacheError",
    "CorruptChunkError",
    "DatasetMismatchError",
    "IncompleteCacheError",
    "InvalidManifestError",
    "Location",
    "Manifest",
    "ManifestMismatchError",
    "NotACacheError",
    "RecordError",
    "RequestError",
    "SchemaVersionError",
    "ShardAlreadyWrittenError",
    "TeacherInfo",
    "ViewInfo",
    "ViewSlab",
    "create",
    "fingerprint",
    "inspect",
    "open_cache",
    "open_writer",
    "summarize",
]
