"""Fixtures for the storage tests: a tiny seeded manifest and a shared template cache."""

from __future__ import annotations

import shutil

import pytest
from storage_testlib import C, K, N, S, V, write_cache

from storage.synthetic import make_labels, make_manifest


@pytest.fixture
def manifest():
    return make_manifest(num_samples=N, num_classes=C, k=K, num_views=V, shard_size=S)


@pytest.fixture
def labels():
    return make_labels(N, C)


@pytest.fixture(scope="session")
def template_cache(tmp_path_factory):
    """A topk cache (N=100, C=10, K=5, V=2, S=16) complete but for (view 1, shard 2)."""
    root = tmp_path_factory.mktemp("template")
    m = make_manifest(num_samples=N, num_classes=C, k=K, num_views=V, shard_size=S)
    write_cache(root / "cache.zarr", m, make_labels(N, C), skip={(1, 2)})
    return root / "cache.zarr"


@pytest.fixture
def cache_copy(template_cache, tmp_path):
    """A private copy of ``template_cache`` under tmp_path."""
    path = tmp_path / "cache.zarr"
    shutil.copytree(template_cache, path)
    return path
