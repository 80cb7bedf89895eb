"""fsspec URLs: the same cache through memory:// and file:// as through a local path."""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pytest
from storage_testlib import C, K, N, S, keys_for, write_cache

import storage
from storage.synthetic import make_labels, make_manifest


@pytest.fixture
def memory_url():
    url = f"memory://pld-test-{uuid.uuid4().hex}/cache.zarr"
    yield url
    fs = fsspec.filesystem("memory")
    root = url.split("://", 1)[1].split("/")[0]
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_url_cache_equals_local_cache(scheme, memory_url, tmp_path):
    m = make_manifest(num_samples=N, num_classes=C, k=K, num_views=2, shard_size=S)
    labels = make_labels(N, C)
    url = memory_url if scheme == "memory" else f"file://{tmp_path / 'u.zarr'}"
    write_cache(url, m, labels, skip={(1, 6)})
    write_cache(tmp_path / "local.zarr", m, labels, skip={(1, 6)})
    got, want = storage.open_cache(url), storage.open_cache(tmp_path / "local.zarr")
    got.validate(dataset_keys=keys_for(labels), require_complete=False)
    assert got.missing() == [(1, 6)]
    for v in range(2):
        np.testing.assert_array_equal(
            got.load_view(v, stop=96).topk_logp, want.load_view(v, stop=96).topk_logp
        )
    assert storage.summarize(url).top1 == storage.summarize(tmp_path / "local.zarr").top1


def test_missing_chunk_is_detected_on_a_url_store(memory_url):
    m = make_manifest(num_samples=N, num_classes=C, k=K, num_views=1, shard_size=S)
    write_cache(memory_url, m, make_labels(N, C))
    fsspec.filesystem("memory").rm(memory_url.split("://", 1)[1] + "/crop/c/0/5/0")
    with pytest.raises(storage.CorruptChunkError, match="crop/c/0/5/0"):
        storage.open_cache(memory_url).load_view(0)
