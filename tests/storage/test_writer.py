"""Writer: layout per DESIGN.md, stored values, done bits, skip/strict, resume, overwrite."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from storage_testlib import C, K, N, S, V, keys_for, tree_hash, write_cache, zarr_arrays

import storage
from storage.synthetic import make_labels, make_manifest, make_records


def test_layout_matches_design(tmp_path, manifest, labels):
    write_cache(tmp_path / "c.zarr", manifest, labels)
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    expected = {
        "topk_idx": ((V, N, K), np.int16, (1, S, K)),
        "topk_logp": ((V, N, K), np.float16, (1, S, K)),
        "lse": ((V, N, 2), np.float32, (1, S, 2)),
        "gt_logit": ((V, N), np.float32, (1, S)),
        "crop": ((V, N, 4), np.int32, (1, S, 4)),
        "flip": ((V, N), np.uint8, (1, S)),
        "bad": ((V, N), np.bool_, (1, S)),
        "label": ((N,), np.int32, (S,)),
        "hw": ((N, 2), np.int32, (S, 2)),
        "done": ((V, -(-N // S)), np.bool_, (1, 1)),
    }
    assert set(dict(g.arrays())) == set(expected) | {"key"}
    for name, (shape, dtype, chunks) in expected.items():
        assert g[name].shape == shape, name
        assert g[name].dtype == np.dtype(dtype), name
        assert g[name].chunks == chunks, name
    assert g["key"].shape == (N,)
    assert g["key"][0] == keys_for(labels)[0]
    assert g.attrs["schema_version"] == storage.SCHEMA_VERSION
    assert g.attrs["pld_cache"]["teacher"]["name"] == "synthetic"
    assert g.attrs["pld_cache"]["created_at"] != ""
    assert g.attrs["pld_cache"]["library_versions"]["zarr"] == zarr.__version__


def test_class_indices_are_int32_above_32767_classes(tmp_path):
    m = make_manifest(num_samples=8, num_classes=40000, k=3, num_views=1, shard_size=8)
    labels = make_labels(8, 40000)
    write_cache(tmp_path / "c.zarr", m, labels)
    stored = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["topk_idx"]
    assert stored.dtype == np.int32
    expected = make_records(m, 0, 0, 8, labels)["topk_idx"]
    assert expected.max() > 32767  # the seeded data does use the int32 range
    np.testing.assert_array_equal(stored[0], expected)


def test_stored_values_equal_records_in_storage_dtypes(tmp_path, manifest, labels):
    write_cache(tmp_path / "c.zarr", manifest, labels)
    arrays = zarr_arrays(tmp_path / "c.zarr")
    for v in range(V):
        for s in range(manifest.num_shards):
            a, b = s * S, min((s + 1) * S, N)
            rec = make_records(manifest, v, a, b, labels)
            np.testing.assert_array_equal(arrays["topk_idx"][v, a:b], rec["topk_idx"])
            # float16 keeps 11 significant bits: relative error <= 2**-11.
            np.testing.assert_allclose(
                arrays["topk_logp"][v, a:b].astype(np.float64),
                rec["topk_logp"],
                rtol=2**-11,
                atol=1e-7,
            )
            np.testing.assert_array_equal(arrays["lse"][v, a:b], rec["lse"])
            np.testing.assert_array_equal(arrays["gt_logit"][v, a:b], rec["gt_logit"])
            np.testing.assert_array_equal(arrays["crop"][v, a:b], rec["crop"])
            np.testing.assert_array_equal(arrays["flip"][v, a:b], rec["flip"].astype(np.uint8))
            if v == 0:
                np.testing.assert_array_equal(arrays["hw"][a:b], rec["hw"])
    np.testing.assert_array_equal(arrays["label"], labels)
    assert arrays["done"].all()
    assert not arrays["bad"].any()


def test_full_format_stores_float16_logits(tmp_path, labels):
    m = make_manifest(num_samples=N, num_classes=C, k=0, fmt="full", num_views=1, shard_size=S)
    write_cache(tmp_path / "c.zarr", m, labels)
    arrays = zarr_arrays(tmp_path / "c.zarr")
    assert "topk_idx" not in arrays
    assert arrays["logits"].dtype == np.float16
    rec = make_records(m, 0, 0, S, labels)
    np.testing.assert_array_equal(arrays["logits"][0, :S], rec["logits"].astype(np.float16))


def test_done_bit_only_after_write_and_missing_lists_the_rest(tmp_path, manifest, labels):
    w = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    assert len(w.missing()) == V * manifest.num_shards
    assert not w.is_done(1, 3)
    assert w.write_shard(1, 3, make_records(manifest, 1, 48, 64, labels)) is True
    assert w.is_done(1, 3)
    assert (1, 3) not in w.missing()
    assert len(w.missing()) == V * manifest.num_shards - 1


def test_last_shard_may_be_short(tmp_path, manifest, labels):
    w = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    last = w.num_shards - 1
    assert w.shard_range(last) == (96, 100)
    w.write_shard(0, last, make_records(manifest, 0, 96, 100, labels))
    assert w.is_done(0, last)
    with pytest.raises(storage.RequestError, match="out of range"):
        w.shard_range(w.num_shards)


def test_done_shard_is_skipped_or_refused_when_strict(tmp_path, manifest, labels):
    w = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    rec = make_records(manifest, 0, 0, S, labels)
    assert w.write_shard(0, 0, rec)
    before = zarr_arrays(tmp_path / "c.zarr")
    other = make_records(manifest, 0, 0, S, labels, seed=5)
    assert w.write_shard(0, 0, other) is False
    after = zarr_arrays(tmp_path / "c.zarr")
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    with pytest.raises(storage.ShardAlreadyWrittenError, match="already written"):
        w.write_shard(0, 0, other, strict=True)


def test_hw_is_written_by_view_zero_only(tmp_path, manifest, labels):
    w = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    rec1 = make_records(manifest, 1, 0, S, labels)
    rec1["hw"] = np.full((S, 2), 7)
    w.write_shard(1, 0, rec1)
    hw = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["hw"][:S]
    assert (hw == 0).all()  # view 1 does not touch hw (view 0's writer owns its chunk)
    rec0 = make_records(manifest, 0, 0, S, labels)
    del rec0["hw"]
    with pytest.raises(storage.RecordError, match="hw"):
        w.write_shard(0, 0, rec0)


def test_bad_rows_are_stored_and_exempt_from_topk_row_checks(tmp_path, manifest, labels):
    w = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    rec = make_records(manifest, 0, 0, S, labels)
    bad = np.zeros(S, bool)
    bad[3] = True
    rec["bad"] = bad
    rec["topk_idx"][3] = 0  # filler row of an undecodable image
    rec["topk_logp"][3] = 0.0
    w.write_shard(0, 0, rec)
    stored = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["bad"][0, :S]
    np.testing.assert_array_equal(stored, bad)


def test_reopen_with_same_manifest_resumes(tmp_path, manifest, labels):
    w = write_cache(tmp_path / "c.zarr", manifest, labels, skip={(1, 1), (0, 4)})
    again = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    assert again.missing() == [(0, 4), (1, 1)]
    assert again.manifest.created_at == w.manifest.created_at


def test_check_create_says_what_create_would_do_and_writes_nothing(tmp_path, manifest, labels):
    keys = keys_for(labels)
    assert storage.check_create(tmp_path / "new.zarr", manifest, keys, labels) == "create"
    assert not (tmp_path / "new.zarr").exists()
    (tmp_path / "empty").mkdir()
    assert storage.check_create(tmp_path / "empty", manifest, keys, labels) == "create"
    write_cache(tmp_path / "c.zarr", manifest, labels, skip={(1, 1)})
    before = tree_hash(tmp_path)
    assert storage.check_create(tmp_path / "c.zarr", manifest, keys, labels) == "resume"
    other = make_manifest(num_samples=N, num_classes=C, k=3, num_views=1, shard_size=S)
    assert storage.check_create(tmp_path / "c.zarr", other, keys, labels, overwrite=True) == (
        "replace"
    )
    assert tree_hash(tmp_path) == before
    assert [p.name for p in sorted((tmp_path / "empty").iterdir())] == []


def test_overwrite_replaces_a_cache(tmp_path, manifest, labels):
    write_cache(tmp_path / "c.zarr", manifest, labels)
    other = make_manifest(num_samples=N, num_classes=C, k=3, num_views=1, shard_size=S)
    w = storage.create(tmp_path / "c.zarr", other, keys_for(labels), labels, overwrite=True)
    assert w.manifest.k == 3
    assert len(w.missing()) == w.num_shards
    assert storage.open_cache(tmp_path / "c.zarr").k == 3


@pytest.mark.parametrize("compressor", sorted(storage.COMPRESSORS))
def test_every_compressor_round_trips(tmp_path, manifest, labels, compressor):
    write_cache(tmp_path / "c.zarr", manifest, labels, compressor=compressor)
    slab = storage.open_cache(tmp_path / "c.zarr").load_view(1)
    rec = make_records(manifest, 1, 0, S, labels)
    np.testing.assert_array_equal(slab.topk_idx[:S], rec["topk_idx"])


def test_writer_pickles_as_a_reopened_writer(tmp_path, manifest, labels):
    import pickle

    w = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    w2 = pickle.loads(pickle.dumps(w))
    w2.write_shard(0, 1, make_records(manifest, 0, 16, 32, labels))
    assert w.is_done(0, 1)


def test_a_writers_reader_reads_its_open_store(tmp_path, manifest, labels, monkeypatch):
    # finalize_cache reads back what it writes through one open store (storage.writer.reader):
    # it must see the writer's latest writes, equal to plain zarr, and open nothing more.
    w = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    w.write_shard(0, 1, make_records(manifest, 0, S, 2 * S, labels))
    opened = []
    real = storage.location.read_manifest
    monkeypatch.setattr(
        storage.location, "read_manifest", lambda *a, **kw: opened.append(kw) or real(*a, **kw)
    )
    with w.reader() as r:
        w.write_shard(1, 2, make_records(manifest, 1, 2 * S, 3 * S, labels))  # after opening
        arrays = zarr_arrays(tmp_path / "c.zarr")
        assert (1, 2) not in r.missing()
        assert r.missing() == w.missing()
        assert (
            len(r.missing())
            == V * manifest.num_shards - int(arrays["done"].sum())
            == len(w.missing())
        )
        np.testing.assert_array_equal(r.bad_mask(), arrays["bad"])
        np.testing.assert_array_equal(np.asarray(r.keys), arrays["key"])
    assert opened == []
