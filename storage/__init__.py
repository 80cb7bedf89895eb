"""The logit cache: a chunked Zarr v3 store of teacher outputs per (view, sample).

Public API (see storage/README.md for the on-disk format):
``create`` / ``open_writer`` -> ``CacheWriter.write_shard`` (``check_create`` makes
``create``'s checks without writing); ``open_cache`` ->
``CacheReader.validate`` / ``load_view`` / ``prefetch`` / ``iter_view``;
``inspect`` / ``summarize`` (``summary_of`` an open reader); the ``Manifest``
dataclasses (with ``ClassList``, ``LabelCheck``), ``manifest_hash``, ``fingerprint`` and
``class_list_sha256``; the errors.
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
from storage.labels import ClassList, LabelCheck, class_list_sha256
from storage.location import Location
from storage.manifest import (
    SCHEMA_VERSION,
    Manifest,
    TeacherInfo,
    ViewInfo,
    fingerprint,
    manifest_hash,
)
from storage.reader import CacheReader, open_cache
from storage.schema import COMPRESSORS, DEFAULT_COMPRESSOR, DEFAULT_SHARD_SIZE
from storage.slab import ViewSlab
from storage.summary import CacheSummary, inspect, summarize, summary_of
from storage.writer import CacheWriter, check_create, create, open_writer

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
    "ClassList",
    "CorruptCacheError",
    "CorruptChunkError",
    "DatasetMismatchError",
    "IncompleteCacheError",
    "InvalidManifestError",
    "Location",
    "LabelCheck",
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
    "check_create",
    "class_list_sha256",
    "create",
    "fingerprint",
    "inspect",
    "manifest_hash",
    "open_cache",
    "open_writer",
    "summarize",
    "summary_of",
]
