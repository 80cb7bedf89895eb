"""Record precision q8 (8-bit top-K log-probs), its two layouts, and schema version 1 caches.

References: the quantizer against a float64 reading of its contract written as plain
loops; the stored arrays read back with plain zarr and the format's formulas written out
here (storage/README.md); a version-1 cache made by editing a new cache's attributes with
plain zarr to what the version-1 writer wrote; a version-2 q8 cache checked array by
array against the version-2 layout (names, shapes, the top-1's zero code column).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import zarr
from storage_testlib import as_schema_version_1, keys_for, write_cache

import storage
from storage.quantize import dequantize_logp, max_error, quantize_logp, relative_lse
from storage.synthetic import make_labels, make_manifest, make_records


def _descending_logp(rng: np.random.Generator, n: int, k: int, c: int = 1000) -> np.ndarray:
    """Real-looking top-K log-probs: log-softmax of Gaussian logits, sorted, first k."""
    z = rng.standard_normal((n, c)) * rng.uniform(0.5, 4.0, (n, 1))
    z[:, 0] += rng.uniform(0.0, 15.0, n)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -np.sort(-logp, axis=1)[:, :k]


@pytest.mark.parametrize("m", [1, 2])  # steps per octave: schema version 2, and 3
@pytest.mark.parametrize("k", [1, 2, 10, 100])
def test_quantized_records_keep_the_top1_and_the_order_and_round_by_kl(k, m):
    logp = _descending_logp(np.random.default_rng(k), 300, k)
    exact = np.zeros(logp.shape, bool)
    exact[::3, min(1, k - 1)] = k > 1  # the true class in the second slot of every third row
    top1, exponent, code = quantize_logp(logp, exact, steps_per_octave=m)
    assert top1.dtype == np.float16
    assert exponent.dtype == np.int8
    assert code.dtype == np.uint8
    assert not code[:, 0].any()  # the top-1 has no code: version 3 keeps the step there
    back = dequantize_logp(top1, exponent, code, steps_per_octave=m)
    step_in_column_0 = code.copy()
    step_in_column_0[:, 0] = 200
    assert np.array_equal(back, dequantize_logp(top1, exponent, step_in_column_0, m))
    for row in range(len(logp)):
        # The reference: the format's contract, one record at a time in Python floats.
        true = [float(x) for x in logp[row]]
        s = 2.0 ** (int(exponent[row]) / m)
        first = float(np.float16(true[0]))
        assert math.sqrt(max(first - true[-1], 0.0)) / s <= 255 * (1 + 1e-12)
        spread = math.sqrt(max(first - true[-1], 0.0))
        # the smallest such step: one step of 2**(1/m) finer would not hold the spread
        assert spread == 0 or spread / s > 255 / 2 ** (1 / m) * (1 - 1e-12)
        assert float(back[row, 0]) == first  # the top-1 is exact
        cumulative, previous, running = 0, float("inf"), 0.0
        p1 = math.exp(first)
        tail = max(1.0 - sum(math.exp(x) for x in true), 1e-6)  # the record's true tail
        for j in range(k):
            cumulative += int(code[row, j])
            value = first - (s * cumulative) ** 2
            assert abs(value - float(back[row, j])) <= 1e-5 * (1 + abs(value))
            gap = max(first - true[j], 0.0)
            assert j == 0 or abs(value - true[j]) <= 2 * s * math.sqrt(gap) + s * s + 1e-9
            assert value <= previous  # the order never changes
            previous = value
            if j:
                # Of the codes it could take (root gap / s rounded down or up, not below the
                # previous code), the class took the one with the smaller second-order KL:
                # p d^2 / 2 for its own log error d, plus E^2 / (2 tail) for the running sum
                # E of probability errors (nearest for the true class, not summed).
                low = max(math.floor(math.sqrt(gap) / s), cumulative - int(code[row, j]))
                high = max(min(math.ceil(math.sqrt(gap) / s), 255), low)
                assert cumulative in (low, high)
                p = p1 * math.exp(-gap)
                err = {c: p1 * math.exp(-((s * c) ** 2)) - p for c in (low, high)}
                kl = {
                    c: p * ((s * c) ** 2 - gap) ** 2 / 2 + (running + err[c]) ** 2 / (2 * tail)
                    for c in (low, high)
                }
                if exact[row, j]:
                    assert abs(err[cumulative]) <= min(abs(e) for e in err.values()) + 1e-15
                else:
                    assert kl[cumulative] <= min(kl.values()) * (1 + 1e-9) + 1e-18
                    running += err[cumulative]
        assert cumulative <= 255
    assert (max_error(logp, m) >= np.abs(back - logp) - 1e-6).all()


@pytest.mark.parametrize("m", [1, 2])
def test_max_error_covers_a_near_tie_above_the_float16_top1(m):
    # The top-1 is stored in float16; where it rounds down past rank 2's value, rank 2 is
    # read as the stored top-1, off by up to that rounding, which the bound must include.
    top1 = -0.7
    rounded = float(np.float16(top1))
    if rounded > top1:  # take the float16 neighbour below instead
        top1 = float(np.nextafter(np.float16(rounded), np.float16(-1))) + 1e-4
        rounded = float(np.float16(top1))
    assert rounded < top1
    logp = np.array([[top1, (top1 + rounded) / 2, -3.0], [top1, (top1 + rounded) / 2, top1]])
    logp[1, 2] = (top1 + rounded) / 2  # a tie down to the K-th: the smallest step
    back = dequantize_logp(*quantize_logp(logp, steps_per_octave=m), steps_per_octave=m)
    error = np.abs(back.astype(np.float64) - logp)
    assert error[:, 1].min() > 1e-5  # the case is real: rank 2 is read at the rounded top-1
    assert (max_error(logp, m) >= error).all()


def test_flat_records_and_ties_quantize_without_dividing_by_zero():
    logp = np.full((3, 4), -np.log(4.0))
    logp[2, 2:] = -3.0  # a tie at the tail
    top1, exponent, code = quantize_logp(logp)
    back = dequantize_logp(top1, exponent, code)
    assert not code[:2].any()
    assert np.allclose(back[:2], np.float16(-np.log(4.0)), atol=0)
    assert back[2, 2] == back[2, 3]


def _q8_manifest(**overrides):
    fields = dict(num_samples=100, num_classes=10, k=5, num_views=2, shard_size=16)
    fields.update(overrides)
    return make_manifest(record_precision="q8", **fields)


def _want(m, v, labels):
    """The records the writer was given for view v (the reference), concatenated."""
    n, size = m.num_samples, m.shard_size
    shards = [make_records(m, v, a, min(a + size, n), labels) for a in range(0, n, size)]
    return {name: np.concatenate([r[name] for r in shards]) for name in shards[0]}


def _labels_left_out(m, v, a, b, labels):
    """Records of one shard where every third row's label is not among the K classes:
    its slot gets a class the row lacks (the rows stay valid: distinct, sorted)."""
    records = make_records(m, v, a, b, labels)
    idx = records["topk_idx"].copy()
    for row in range(-a % 3, b - a, 3):  # samples 0, 3, 6, ...
        unused = sorted(set(range(m.num_classes)) - set(idx[row].tolist()))[0]
        idx[row][idx[row] == labels[a + row]] = unused
    records["topk_idx"] = idx
    return records


def test_a_q8_cache_stores_small_arrays_and_reads_back_within_the_quantizer_error(tmp_path):
    m = _q8_manifest(temperatures=(2.0, 1.0, 4.0))  # T = 1 not first: the gap columns move
    labels = make_labels(100, 10)
    writer = storage.create(tmp_path / "q8.zarr", m, keys_for(labels), labels)
    wanted = {v: [] for v in range(2)}
    for v in range(2):
        for shard in range(m.num_shards):
            records = _labels_left_out(m, v, *writer.shard_range(shard), labels)
            writer.write_shard(v, shard, records)
            wanted[v].append(records)
    g = zarr.open_group(str(tmp_path / "q8.zarr"), mode="r")
    assert g.attrs["schema_version"] == 3
    assert g.attrs["pld_cache"]["record_precision"] == "q8"
    assert not {"topk_logp", "topk_log2_step", "topk_step"} & set(g.array_keys())
    dtypes = {name: g[name].dtype for name in ("topk_code", "crop", "lse_gap")}
    assert dtypes == {"topk_code": np.uint8, "crop": np.uint16, "lse_gap": np.float16}
    # Nothing that is always zero is stored: the top-1's code byte holds the step, and
    # there is no T = 1 gap.
    assert g["topk_code"].shape == (2, 100, 5)
    assert g["lse_gap"].shape == (2, 100, 2)
    # q8 defaults to blosc-zstd; its codes are whole bytes for zstd's entropy coder.
    blosc = g["topk_code"].compressors[0].to_dict()["configuration"]
    assert (blosc["cname"], blosc["shuffle"]) == ("zstd", "noshuffle")
    reader = storage.open_cache(tmp_path / "q8.zarr")
    for v in range(2):
        want = {name: np.concatenate([r[name] for r in wanted[v]]) for name in wanted[v][0]}
        slab = reader.load_view(v)
        assert np.array_equal(slab.topk_idx, want["topk_idx"])
        assert np.array_equal(slab.crop, want["crop"])
        assert slab.crop.dtype == np.int32
        assert np.array_equal(slab.flip, want["flip"].astype(np.uint8))
        error = np.abs(slab.topk_logp.astype(np.float64) - want["topk_logp"])
        assert (error <= max_error(want["topk_logp"], 2) + 1e-6).all()
        # The plain-zarr dequantization (storage/README.md) gives the same numbers.
        logp1, code = g["topk_logp1"][v], g["topk_code"][v]
        s = np.exp2((code[:, 0].astype(np.float32) - 128) / 2)
        root = s[:, None] * np.cumsum(code[:, 1:], axis=1, dtype=np.int32)
        rest = logp1.astype(np.float32)[:, None] - np.square(root.astype(np.float32))
        plain = np.concatenate([logp1.astype(np.float32)[:, None], rest], axis=1)
        assert np.allclose(plain, slab.topk_logp, rtol=1e-6, atol=1e-6)
        # lse relative to lse(1), 0 at T = 1; the stored columns are T = 2 and 4.
        one = want["lse"][:, [1]].astype(np.float64)
        rel = want["lse"] - one / np.asarray(m.temperatures)
        assert np.allclose(slab.lse, rel, rtol=0, atol=np.abs(rel).max() * 2**-10)
        assert (slab.lse[:, 1] == 0).all()
        assert np.array_equal(g["lse_gap"][v], slab.lse[:, [0, 2]].astype(np.float16))
        # The label's log-prob: its slot's value when in the top-K (gt_logp stores 0
        # there), else gt_logit - lse(1) in float16.
        hit = want["topk_idx"] == labels[:, None]
        inside = hit.any(axis=1)
        assert not inside[::3].any()
        assert inside.sum() > 50  # the synthetic teacher mostly ranks the label high
        assert (g["gt_logp"][v][inside] == 0).all()
        assert np.array_equal(slab.gt_logit[inside], slab.topk_logp[hit])
        gt = want["gt_logit"] - one[:, 0]
        assert np.allclose(slab.gt_logit[~inside], gt[~inside], rtol=2**-10, atol=1e-6)
        assert np.allclose(slab.gt_logit[inside], gt[inside], rtol=0, atol=0.05)
        assert slab.topk_logp.dtype == np.float32
    assert reader.load_view(0, k=2).topk_logp.shape == (100, 2)
    assert "records q8" in storage.inspect(tmp_path / "q8.zarr")


def test_a_schema_version_2_q8_cache_keeps_its_layout_reads_and_resumes(tmp_path):
    m = dataclasses.replace(_q8_manifest(), schema_version=2)
    labels = make_labels(100, 10)
    write_cache(tmp_path / "v2.zarr", m, labels, skip=[(1, 3)])
    g = zarr.open_group(str(tmp_path / "v2.zarr"), mode="r")
    # The version-2 layout, as that release wrote it: a whole-octave step, K code columns
    # (the top-1's always 0), every temperature's gap, gt_logp in every row.
    assert g.attrs["schema_version"] == 2
    assert g["topk_log2_step"].dtype == np.int8
    assert g["topk_code"].shape == (2, 100, 5)
    assert g["lse_gap"].shape == (2, 100, len(m.temperatures))
    # A resumed version-2 cache is finished in its own layout.
    writer = storage.create(tmp_path / "v2.zarr", _q8_manifest(), keys_for(labels), labels)
    assert writer.manifest.schema_version == 2
    assert writer.missing() == [(1, 3)]
    writer.write_shard(1, 3, make_records(m, 1, 48, 64, labels))
    reader = storage.open_cache(tmp_path / "v2.zarr")
    for v in range(2):
        code = g["topk_code"][v]
        assert not code[:, 0].any()
        slab, want = reader.load_view(v), _want(m, v, labels)
        assert np.array_equal(slab.topk_idx, want["topk_idx"])
        logp1, e = g["topk_logp1"][v], g["topk_log2_step"][v]
        root = np.ldexp(np.float32(1), e.astype(np.int32))[:, None] * np.cumsum(code, axis=1)
        plain = logp1.astype(np.float32)[:, None] - np.square(root.astype(np.float32))
        assert np.allclose(plain, slab.topk_logp, rtol=1e-6, atol=1e-6)
        error = np.abs(slab.topk_logp.astype(np.float64) - want["topk_logp"])
        assert (error <= max_error(want["topk_logp"], 1) + 1e-6).all()
        one = want["lse"][:, [0]].astype(np.float64)
        rel = want["lse"] - one / np.asarray(m.temperatures)
        assert np.allclose(slab.lse, rel, rtol=0, atol=np.abs(rel).max() * 2**-10)
        gt = want["gt_logit"] - one[:, 0]
        assert np.allclose(slab.gt_logit, gt, rtol=2**-10, atol=1e-6)


@pytest.mark.parametrize(("k", "temperatures"), [(1, (1.0, 4.0)), (3, (1.0,))])
def test_q8_caches_with_nothing_but_the_top1_or_t1_read_back(tmp_path, k, temperatures):
    m = _q8_manifest(k=k, temperatures=temperatures)
    labels = make_labels(100, 10)
    write_cache(tmp_path / "c.zarr", m, labels)
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert g["topk_code"].shape == (2, 100, k)  # at K = 1, the step alone
    if len(temperatures) > 1:
        assert g["lse_gap"].shape == (2, 100, len(temperatures) - 1)
    else:  # no zero-width array (the zarr v3 spec wants every chunk dimension >= 1)
        assert "lse_gap" not in g
    for name in g.array_keys():
        assert all(c >= 1 for c in g[name].chunks), name
    slab, want = storage.open_cache(tmp_path / "c.zarr").load_view(1), _want(m, 1, labels)
    assert slab.topk_logp.shape == (100, k)
    assert slab.lse.shape == (100, len(temperatures))
    assert np.array_equal(slab.topk_logp[:, 0], want["topk_logp"][:, 0].astype(np.float16))
    error = np.abs(slab.topk_logp.astype(np.float64) - want["topk_logp"])
    assert (error <= max_error(want["topk_logp"], 2) + 1e-6).all()
    one = want["lse"][:, [0]].astype(np.float64)
    rel = want["lse"] - one / np.asarray(temperatures)
    assert np.allclose(slab.lse, rel, rtol=0, atol=max(np.abs(rel).max(), 1) * 2**-10)
    assert np.array_equal(slab.lse[:, 1:], relative_lse(want["lse"], temperatures)[:, 1:])


def test_every_imagenet21k_class_id_round_trips_in_a_q8_cache(tmp_path):
    c, k, n = 21843, 8, 2731  # n * k >= C: every class appears in some row
    m = _q8_manifest(num_samples=n, num_classes=c, k=k, num_views=1, shard_size=1024)
    labels = np.arange(n, dtype=np.int32) % c
    ids = np.arange(n * k) % c
    idx = ids.reshape(n, k)  # distinct per row
    logp = -np.sort(np.random.default_rng(0).uniform(0.0, 20.0, (n, k)), axis=1)
    writer = storage.create(tmp_path / "in21k.zarr", m, keys_for(labels), labels)
    for s in range(m.num_shards):
        a, b = writer.shard_range(s)
        records = make_records(m, 0, a, b, labels)  # lse, gt, crop, flip, hw
        records.update(topk_idx=idx[a:b], topk_logp=logp[a:b])
        writer.write_shard(0, s, records)
    stored = zarr.open_group(str(tmp_path / "in21k.zarr"), mode="r")["topk_idx"][0]
    assert stored.dtype == np.int16  # the smallest signed type that holds 21,843
    back = storage.open_cache(tmp_path / "in21k.zarr").load_view(0).topk_idx
    assert np.array_equal(back.astype(np.int64), idx)
    assert set(back.ravel().tolist()) == set(range(c))


def test_q8_refuses_boxes_beyond_uint16_and_full_logits(tmp_path):
    m = _q8_manifest(num_views=1)
    labels = make_labels(100, 10)
    writer = storage.create(tmp_path / "q8.zarr", m, keys_for(labels), labels)
    records = make_records(m, 0, 0, 16, labels)
    records["crop"] = records["crop"].copy()
    records["crop"][3, 2] = 70000
    with pytest.raises(storage.RecordError, match="uint16"):
        writer.write_shard(0, 0, records)
    assert not writer.is_done(0, 0)
    with pytest.raises(storage.InvalidManifestError, match="format 'topk'"):
        make_manifest(fmt="full", k=0, record_precision="q8")


def test_a_schema_version_1_cache_opens_reads_and_keeps_its_hash(tmp_path):
    m = make_manifest(num_samples=100, num_classes=10, k=5, num_views=2, shard_size=16)
    labels = make_labels(100, 10)
    write_cache(tmp_path / "new.zarr", m, labels)
    write_cache(tmp_path / "old.zarr", m, labels)
    as_schema_version_1(tmp_path / "old.zarr")
    old_json = zarr.open_group(str(tmp_path / "old.zarr"), mode="r").attrs["pld_cache"]

    old = storage.open_cache(tmp_path / "old.zarr")
    new = storage.open_cache(tmp_path / "new.zarr")
    assert (old.manifest.schema_version, old.manifest.record_precision) == (1, "fp16")
    assert old.manifest.to_dict() == old_json  # re-serialised exactly as stored
    for v in range(2):
        a, b = old.load_view(v), new.load_view(v)
        for name in ("topk_idx", "topk_logp", "lse", "gt_logit", "crop", "flip", "label"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # Runs record manifest_hash: a version-1 cache keeps the hash of its version-1 JSON.
    import hashlib
    import json

    text = json.dumps({k: v for k, v in old_json.items() if k != "label_check"}, sort_keys=True)
    assert storage.manifest_hash(old.manifest) == hashlib.sha256(text.encode()).hexdigest()
    # Same contents: a current fp16 manifest resumes it and a student accepts it.
    current = dataclasses.replace(old.manifest, schema_version=storage.SCHEMA_VERSION)
    assert old.manifest.compatible_with(current)
    assert not old.manifest.compatible_with(dataclasses.replace(current, record_precision="q8"))
    old.validate(expect=current)
    writer = storage.create(tmp_path / "old.zarr", current, keys_for(labels), labels)
    assert writer.manifest.schema_version == 1
    assert writer.missing() == []
    assert storage.summarize(tmp_path / "old.zarr").tail_mass_at[0][1.0] >= 0


def test_a_version_1_manifest_with_a_precision_is_refused():
    data = make_manifest().to_dict()
    data["schema_version"] = 1
    with pytest.raises(storage.InvalidManifestError, match="version 1"):
        storage.Manifest.from_dict(data)
