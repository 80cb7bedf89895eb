"""Reader: validate, load_view (+ k), prefetch, iter_view, gather, bad mask, plain dask."""

from __future__ import annotations

import dataclasses
import pickle

import dask.array as da
import numpy as np
import pytest
from storage_testlib import C, K, N, S, keys_for, write_cache

import storage
from storage.synthetic import make_labels, make_manifest, make_records


def expected_view(manifest, labels, v, start=0, stop=N):
    """The records of [start, stop) of view v, regenerated and cast by hand."""
    parts = [make_records(manifest, v, a, min(a + S, N), labels) for a in range(0, N, S)]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {k: x[start:stop] for k, x in cat.items()}


def test_open_reports_shape(cache_copy):
    r = storage.open_cache(cache_copy)
    assert (r.num_samples, r.num_views, r.num_classes, r.k, r.format, r.num_shards) == (
        N,
        2,
        C,
        K,
        "topk",
        7,
    )
    np.testing.assert_array_equal(r.labels, make_labels(N, C))
    assert r.labels.dtype == np.int32
    assert list(r.keys) == keys_for(make_labels(N, C))
    assert r.missing() == [(1, 2)]


def test_load_view_equals_written_records(cache_copy):
    r = storage.open_cache(cache_copy)
    labels = make_labels(N, C)
    exp = expected_view(r.manifest, labels, 0)
    slab = r.load_view(0)
    assert len(slab) == N
    assert slab.view == 0
    assert slab.start == 0
    np.testing.assert_array_equal(slab.topk_idx, exp["topk_idx"])
    np.testing.assert_array_equal(slab.topk_logp, exp["topk_logp"].astype(np.float16))
    np.testing.assert_array_equal(slab.lse, exp["lse"])
    np.testing.assert_array_equal(slab.gt_logit, exp["gt_logit"])
    np.testing.assert_array_equal(slab.crop, exp["crop"])
    np.testing.assert_array_equal(slab.flip, exp["flip"])
    np.testing.assert_array_equal(slab.label, labels)
    assert slab.temperatures == (1.0, 4.0)
    assert slab.logits is None
    assert (slab.topk_logp.dtype, slab.lse.dtype, slab.crop.dtype, slab.flip.dtype) == (
        np.float16,
        np.float32,
        np.int32,
        np.uint8,
    )


def test_load_range_and_truncated_k(cache_copy):
    r = storage.open_cache(cache_copy)
    exp = expected_view(r.manifest, make_labels(N, C), 0, 20, 70)
    slab = r.load_view(0, start=20, stop=70, k=2)
    assert slab.start == 20
    assert len(slab) == 50
    np.testing.assert_array_equal(slab.topk_idx, exp["topk_idx"][:, :2])
    assert slab.topk_idx.flags["C_CONTIGUOUS"]
    with pytest.raises(storage.RequestError, match="k=6"):
        r.load_view(0, k=6)
    with pytest.raises(storage.RequestError, match=r"\[90, 101\)"):
        r.load_view(0, start=90, stop=101)
    with pytest.raises(storage.RequestError, match="view 2"):
        r.load_view(2)


def test_full_cache_k_computes_topk_at_load(tmp_path):
    labels = make_labels(N, C)
    m = make_manifest(num_samples=N, num_classes=C, k=0, fmt="full", num_views=1, shard_size=S)
    write_cache(tmp_path / "c.zarr", m, labels)
    r = storage.open_cache(tmp_path / "c.zarr")
    dense = r.load_view(0)
    assert dense.topk_idx is None
    assert dense.logits.shape == (N, C)
    slab = r.load_view(0, k=3)
    assert slab.logits is None
    z = dense.logits.astype(np.float64)
    # Reference: a plain loop over rows, float64, with the cached T=1 logsumexp.
    for i in range(N):
        order = sorted(range(C), key=lambda c: -z[i, c])[:3]
        assert sorted(slab.topk_idx[i].tolist()) == sorted(order)
        want = z[i, slab.topk_idx[i]] - dense.lse[i, 0]
        np.testing.assert_allclose(slab.topk_logp[i].astype(np.float64), want, atol=2e-2)


def test_prefetch_returns_the_same_slab(cache_copy):
    with storage.open_cache(cache_copy) as r:
        fut = r.prefetch(0, k=3)
        got, ref = fut.result(), r.load_view(0, k=3)
    for f in dataclasses.fields(ref):
        a, b = getattr(got, f.name), getattr(ref, f.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


def test_iter_view_reads_shard_ranges_that_cover_the_view(cache_copy):
    r = storage.open_cache(cache_copy)
    slabs = list(r.iter_view(0, max_records=40))
    assert [(s.start, len(s)) for s in slabs] == [(0, 32), (32, 32), (64, 32), (96, 4)]
    whole = r.load_view(0)
    np.testing.assert_array_equal(np.concatenate([s.topk_logp for s in slabs]), whole.topk_logp)
    assert r.shard_ranges(5) == [(a, min(a + 16, N)) for a in range(0, N, 16)]


def test_gather_picks_rows_in_order(cache_copy):
    slab = storage.open_cache(cache_copy).load_view(0)
    idx = np.array([5, 99, 0, 5, 42])
    g = slab.gather(idx)
    for j, i in enumerate(idx):
        assert g.topk_idx[j].tolist() == slab.topk_idx[i].tolist()
        assert g.lse[j].tolist() == slab.lse[i].tolist()
        assert (g.gt_logit[j], g.label[j], g.flip[j]) == (
            slab.gt_logit[i],
            slab.label[i],
            slab.flip[i],
        )
    assert g.index.tolist() == idx.tolist()
    assert len(g) == 5
    part = storage.open_cache(cache_copy).load_view(0, start=32, stop=64)
    assert part.gather(np.array([0, 3])).index.tolist() == [32, 35]
    assert part.gather(np.array([1])).gather(np.array([0])).index.tolist() == [33]
    with pytest.raises(storage.RequestError, match="gather indices"):
        slab.gather(np.array([-1]))
    with pytest.raises(storage.RequestError, match="gather indices"):
        slab.gather(np.array([N]))


def test_bad_mask_reports_bad_images(tmp_path):
    labels = make_labels(N, C)
    m = make_manifest(num_samples=N, num_classes=C, k=K, num_views=2, shard_size=S)
    w = storage.create(tmp_path / "c.zarr", m, keys_for(labels), labels)
    rec = make_records(m, 1, 16, 32, labels)
    rec["bad"] = np.arange(16) == 4
    w.write_shard(1, 1, rec)
    mask = storage.open_cache(tmp_path / "c.zarr").bad_mask()
    assert mask.shape == (2, N)
    assert mask.sum() == 1
    assert mask[1, 20]


def test_validate_accepts_the_right_cache(cache_copy):
    r = storage.open_cache(cache_copy)
    keys = keys_for(make_labels(N, C))
    r.validate(
        {
            "teacher.name": "synthetic",
            "views.mode": "replay",
            "num_classes": C,
            "temperatures": (1.0, 4.0),
            "views": {"num_views": 2},
        },
        dataset_keys=keys,
        dataset_fingerprint="f" * 64,
        require_complete=False,
    )
    r.validate(dataclasses.replace(r.manifest, producer="x"), require_complete=False)


def test_validate_lists_every_mismatch(cache_copy):
    r = storage.open_cache(cache_copy)
    with pytest.raises(storage.ManifestMismatchError) as info:
        r.validate({"teacher.name": "resnet50", "k": 100}, require_complete=False)
    assert "teacher.name: cache has 'synthetic', expected 'resnet50'" in str(info.value)
    assert "k: cache has 5, expected 100" in str(info.value)
    with pytest.raises(storage.ManifestMismatchError, match="unknown manifest field 'colour'"):
        r.validate({"colour": 1}, require_complete=False)


def test_validate_dataset_checks(cache_copy):
    r = storage.open_cache(cache_copy)
    keys = keys_for(make_labels(N, C))
    with pytest.raises(storage.DatasetMismatchError, match="fingerprint"):
        r.validate(dataset_fingerprint="0" * 64, require_complete=False)
    with pytest.raises(storage.DatasetMismatchError, match="1 dataset keys not in the cache"):
        r.validate(dataset_keys=keys[:-1] + ["new/x.png"], require_complete=False)
    with pytest.raises(storage.DatasetMismatchError, match="another order"):
        r.validate(dataset_keys=keys[::-1], require_complete=False)
    with pytest.raises(storage.IncompleteCacheError, match=r"\(1, 2\)") as info:
        r.validate()
    assert info.value.missing == [(1, 2)]


def test_incomplete_view_cannot_be_loaded_but_others_can(cache_copy):
    r = storage.open_cache(cache_copy)
    with pytest.raises(storage.IncompleteCacheError, match=r"\(1, 2\)"):
        r.load_view(1)
    assert len(r.load_view(1, start=48, stop=N)) == 52
    with pytest.raises(storage.IncompleteCacheError):
        r.prefetch(1).result()


def test_reader_pickles(cache_copy):
    r = pickle.loads(pickle.dumps(storage.open_cache(cache_copy)))
    assert r.num_samples == N


def test_plain_dask_reads_the_same_values(cache_copy):
    slab = storage.open_cache(cache_copy).load_view(0)
    logp = da.from_zarr(str(cache_copy), component="topk_logp")
    assert logp.chunksize == (1, S, K)
    np.testing.assert_array_equal(logp[0].compute(), slab.topk_logp)
    tail = 1 - np.exp(logp[0].astype("f8")).sum(axis=-1).compute()
    want = [1 - sum(np.exp(float(x)) for x in row) for row in slab.topk_logp]
    np.testing.assert_allclose(tail, want, atol=1e-12)


def test_keys_of_the_same_set_are_equal_only_in_the_same_order():
    """check_keys' shortcut (both lists strictly sorted, the fingerprints equal) never lets
    a reordered cache through: unsorted stored keys still get the full comparison."""
    import numpy as np

    from storage._checks import check_keys
    from storage.errors import DatasetMismatchError

    keys = ["a/1.jpg", "a/2.jpg", "b/1.jpg"]
    sorted_store = np.asarray(keys, dtype=np.dtypes.StringDType())
    check_keys("c", sorted_store, keys, same_set=True)
    reordered = np.asarray([keys[1], keys[0], keys[2]], dtype=np.dtypes.StringDType())
    for same_set in (True, False):
        with pytest.raises(DatasetMismatchError, match="another order"):
            check_keys("c", reordered, keys, same_set=same_set)
    with pytest.raises(DatasetMismatchError, match="differ"):
        check_keys("c", sorted_store, ["a/1.jpg", "a/2.jpg", "c/1.jpg"], same_set=False)
