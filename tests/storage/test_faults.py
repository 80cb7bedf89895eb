"""Bad input and faults: clear errors, nothing existing changed; SIGKILL mid-shard + resume."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from storage_testlib import C, N, S, keys_for, tree_hash, write_cache, zarr_arrays

import storage
from storage.synthetic import make_labels, make_manifest, make_records

REPO = Path(__file__).resolve().parents[2]
LABELS = make_labels(N, C)
M = make_manifest(num_samples=N, num_classes=C, k=5, num_views=2, shard_size=S)


def writer(ctx):
    return storage.create(ctx["cache"], M, keys_for(LABELS), LABELS)


def bad_records(view=1, shard=2, **changes):
    """Valid records of (view, shard) of the template, with ``changes`` applied."""
    a, b = shard * S, min((shard + 1) * S, N)
    rec = make_records(M, view, a, b, LABELS)
    for name, change in changes.items():
        if change is None:
            del rec[name]
        else:
            rec[name] = change(rec[name]) if callable(change) else change
    return rec


def with_value(row, col, value):
    def change(x):
        x = np.array(x)
        x[(row, col) if x.ndim == 2 else row] = value
        return x

    return change


def set_schema_version(ctx):
    meta_path = ctx["cache"] / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["schema_version"] = 99
    meta_path.write_text(json.dumps(meta))


def make_plain_dir(ctx):
    ctx["plain"].mkdir()
    (ctx["plain"] / "notes.txt").write_text("my thesis")


def make_plain_zarr(ctx):
    zarr.open_group(str(ctx["plain"]), mode="w").create_array("x", shape=(3,), dtype="i4")


def corrupt_chunk(ctx):
    chunk = ctx["cache"] / "topk_logp" / "c" / "0" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def truncate_chunk(ctx):
    chunk = ctx["cache"] / "lse" / "c" / "1" / "4" / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])


def delete_chunk(ctx):
    (ctx["cache"] / "gt_logit" / "c" / "0" / "3").unlink()


def make_empty_cache(ctx):
    storage.create(ctx["tmp"] / "n.zarr", M, keys_for(LABELS), LABELS)


def delete_small_chunk(ctx):
    (ctx["cache"] / "flip" / "c" / "1" / "5").unlink()


def delete_array(ctx):
    import shutil

    shutil.rmtree(ctx["cache"] / "lse")


def other_teacher():
    return dataclasses.replace(M, teacher=dataclasses.replace(M.teacher, name="resnet50"))


# (id, prepare(ctx) or None, action(ctx), error type, message fragment)
CASES = [
    (
        "open-missing-path",
        None,
        lambda c: storage.open_cache(c["tmp"] / "nope"),
        storage.NotACacheError,
        "does not exist",
    ),
    (
        "open-plain-dir",
        make_plain_dir,
        lambda c: storage.open_cache(c["plain"]),
        storage.NotACacheError,
        "not a cache",
    ),
    (
        "open-zarr-not-cache",
        make_plain_zarr,
        lambda c: storage.open_cache(c["plain"]),
        storage.NotACacheError,
        "without a pld_cache manifest",
    ),
    (
        "create-over-plain-dir-even-with-overwrite",
        make_plain_dir,
        lambda c: storage.create(c["plain"], M, keys_for(LABELS), LABELS, overwrite=True),
        storage.NotACacheError,
        "not a zarr cache",
    ),
    (
        "create-over-zarr-not-cache",
        make_plain_zarr,
        lambda c: storage.create(c["plain"], M, keys_for(LABELS), LABELS),
        storage.NotACacheError,
        "overwrite=True",
    ),
    (
        "unknown-schema-version",
        set_schema_version,
        lambda c: storage.open_cache(c["cache"]),
        storage.SchemaVersionError,
        "schema version 99",
    ),
    (
        "second-writer-other-manifest",
        None,
        lambda c: storage.create(c["cache"], other_teacher(), keys_for(LABELS), LABELS),
        storage.ManifestMismatchError,
        "teacher.name: 'synthetic' != 'resnet50'",
    ),
    (
        "open-writer-other-manifest",
        None,
        lambda c: storage.open_writer(c["cache"], dataclasses.replace(M, k=4)),
        storage.ManifestMismatchError,
        "k: 5 != 4",
    ),
    (
        "second-writer-other-labels",
        None,
        lambda c: storage.create(c["cache"], M, keys_for(LABELS), (LABELS + 1) % C),
        storage.DatasetMismatchError,
        "other sample keys or labels",
    ),
    (
        "labels-outside-classes",
        None,
        lambda c: storage.create(c["tmp"] / "new.zarr", M, keys_for(LABELS), LABELS + C),
        storage.RecordError,
        "labels must be in [0, 10)",
    ),
    (
        "duplicate-keys",
        None,
        lambda c: storage.create(c["tmp"] / "new.zarr", M, ["a"] * N, LABELS),
        storage.RecordError,
        "unique",
    ),
    # check_create: the same refusals as create, before anything is written.
    (
        "check-create-over-plain-dir",
        make_plain_dir,
        lambda c: storage.check_create(c["plain"], M, keys_for(LABELS), LABELS, overwrite=True),
        storage.NotACacheError,
        "not a zarr cache",
    ),
    (
        "check-create-over-zarr-not-cache",
        make_plain_zarr,
        lambda c: storage.check_create(c["plain"], M, keys_for(LABELS), LABELS),
        storage.NotACacheError,
        "overwrite=True",
    ),
    (
        "check-create-other-manifest",
        None,
        lambda c: storage.check_create(c["cache"], other_teacher(), keys_for(LABELS), LABELS),
        storage.ManifestMismatchError,
        "teacher.name: 'synthetic' != 'resnet50'",
    ),
    (
        "check-create-other-labels",
        None,
        lambda c: storage.check_create(c["cache"], M, keys_for(LABELS), (LABELS + 1) % C),
        storage.DatasetMismatchError,
        "other sample keys or labels",
    ),
    (
        "check-create-labels-outside-classes",
        None,
        lambda c: storage.check_create(c["tmp"] / "new.zarr", M, keys_for(LABELS), LABELS + C),
        storage.RecordError,
        "labels must be in [0, 10)",
    ),
    (
        "k-greater-than-c",
        None,
        lambda c: make_manifest(num_classes=10, k=11),
        storage.InvalidManifestError,
        "k must be in [1, num_classes=10]",
    ),
    (
        "wrong-shape",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(topk_idx=lambda x: x[:, :4])),
        storage.RecordError,
        "'topk_idx' has shape [16, 4], expected [16, 5]",
    ),
    (
        "wrong-dtype",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(topk_idx=lambda x: x.astype(float))),
        storage.RecordError,
        "'topk_idx' has dtype float64, expected integer",
    ),
    (
        "class-index-out-of-range",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(topk_idx=with_value(0, 4, C))),
        storage.RecordError,
        "expected within [0, 9]",
    ),
    (
        "nan-logp",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(topk_logp=with_value(3, 1, np.nan))),
        storage.RecordError,
        "'topk_logp' holds NaN or Inf (first at row 3",
    ),
    (
        "inf-lse",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(lse=with_value(0, 1, np.inf))),
        storage.RecordError,
        "'lse' holds NaN or Inf",
    ),
    (
        "float16-overflow",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(topk_logp=with_value(2, 4, -7e4))),
        storage.RecordError,
        "overflows float16",
    ),
    (
        "positive-logp",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(topk_logp=lambda x: x + 5)),
        storage.RecordError,
        "must be log-probabilities",
    ),
    (
        "unsorted-logp",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(topk_logp=lambda x: x[:, ::-1])),
        storage.RecordError,
        "sorted descending",
    ),
    (
        "repeated-class",
        None,
        lambda c: writer(c).write_shard(
            1, 2, bad_records(topk_idx=lambda x: np.concatenate([x[:, :1], x[:, :4]], axis=1))
        ),
        storage.RecordError,
        "repeats a class",
    ),
    (
        "negative-crop",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(crop=with_value(0, 0, -1))),
        storage.RecordError,
        "'crop' has values",
    ),
    (
        "flip-not-bool",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(flip=np.full(S, 2, np.uint8))),
        storage.RecordError,
        "'flip' has values",
    ),
    (
        "missing-record",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(lse=None)),
        storage.RecordError,
        "records missing ['lse']",
    ),
    (
        "unknown-record",
        None,
        lambda c: writer(c).write_shard(1, 2, bad_records(logits=np.zeros((S, C)))),
        storage.RecordError,
        "unknown ['logits']",
    ),
    (
        "hw-missing-on-view-0",
        make_empty_cache,
        lambda c: storage.open_writer(c["tmp"] / "n.zarr").write_shard(
            0, 2, bad_records(view=0, hw=None)
        ),
        storage.RecordError,
        "records missing ['hw']",
    ),
    (
        "strict-rewrite",
        None,
        lambda c: writer(c).write_shard(0, 0, bad_records(view=0, shard=0), strict=True),
        storage.ShardAlreadyWrittenError,
        "already written",
    ),
    (
        "view-out-of-range",
        None,
        lambda c: writer(c).write_shard(2, 0, bad_records()),
        storage.RequestError,
        "view 2 is out of range",
    ),
    (
        "validate-other-teacher",
        None,
        lambda c: storage.open_cache(c["cache"]).validate({"teacher.name": "resnet50"}),
        storage.ManifestMismatchError,
        "expected 'resnet50'",
    ),
    (
        "validate-other-views",
        None,
        lambda c: storage.open_cache(c["cache"]).validate({"views.seed": 3}),
        storage.ManifestMismatchError,
        "views.seed: cache has 0, expected 3",
    ),
    (
        "validate-other-dataset",
        None,
        lambda c: storage.open_cache(c["cache"]).validate(dataset_fingerprint="0" * 64),
        storage.DatasetMismatchError,
        "fingerprint",
    ),
    (
        "validate-missing-keys",
        None,
        lambda c: storage.open_cache(c["cache"]).validate(dataset_keys=keys_for(LABELS)[1:]),
        storage.DatasetMismatchError,
        "1 cache keys not in the dataset",
    ),
    (
        "validate-incomplete",
        None,
        lambda c: storage.open_cache(c["cache"]).validate(),
        storage.IncompleteCacheError,
        "1 (view, shard) not written: (1, 2)",
    ),
    (
        "load-incomplete-view",
        None,
        lambda c: storage.open_cache(c["cache"]).load_view(1),
        storage.IncompleteCacheError,
        "(1, 2)",
    ),
    (
        "corrupt-chunk",
        corrupt_chunk,
        lambda c: storage.open_cache(c["cache"]).load_view(0),
        storage.CorruptChunkError,
        "topk_logp/c/0/1/0 cannot be decoded",
    ),
    (
        "truncated-chunk",
        truncate_chunk,
        lambda c: storage.open_cache(c["cache"]).load_view(1, start=64),
        storage.CorruptChunkError,
        "lse/c/1/4/0 cannot be decoded",
    ),
    (
        "missing-chunk",
        delete_chunk,
        lambda c: storage.open_cache(c["cache"]).load_view(0),
        storage.CorruptChunkError,
        "gt_logit/c/0/3 (view 0 shard 3) is missing",
    ),
    (
        "missing-chunk-in-short-range",
        delete_small_chunk,
        lambda c: storage.open_cache(c["cache"]).load_view(1, start=80, stop=N),
        storage.CorruptChunkError,
        "flip/c/1/5 (view 1 shard 5) is missing",
    ),
    (
        "array-missing",
        delete_array,
        lambda c: storage.open_cache(c["cache"]),
        storage.CorruptCacheError,
        "array 'lse' is missing",
    ),
    (
        "inspect-corrupt",
        corrupt_chunk,
        lambda c: storage.inspect(c["cache"]),
        storage.CorruptChunkError,
        "topk_logp/c/0/1/0",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_nothing_changes(case, cache_copy, tmp_path):
    _, prepare, action, error, fragment = case
    ctx = {"tmp": tmp_path, "cache": cache_copy, "plain": tmp_path / "plain"}
    if prepare is not None:
        prepare(ctx)
    before = tree_hash(tmp_path)
    with pytest.raises(error) as info:
        action(ctx)
    assert fragment in str(info.value)
    assert isinstance(info.value, storage.CacheError)
    assert tree_hash(tmp_path) == before


def test_corrupt_chunk_error_names_array_and_chunk(cache_copy):
    corrupt_chunk({"cache": cache_copy})
    with pytest.raises(storage.CorruptChunkError) as info:
        storage.open_cache(cache_copy).load_view(0, k=2)
    assert (info.value.array, info.value.chunk) == ("topk_logp", "c/0/1/0")
    # Other shards are still readable.
    assert len(storage.open_cache(cache_copy).load_view(0, start=32, stop=N)) == N - 32


KILLER = textwrap.dedent("""
    import os, signal, sys
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    import storage, storage.writer as w
    from storage.synthetic import make_labels, make_manifest, make_records

    path, kill_shard, kill_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    m = make_manifest(num_samples=100, num_classes=10, k=5, num_views=2, shard_size=16)
    labels = make_labels(100, 10)
    keys = [f"class{l:02d}/img{i:04d}.png" for i, l in enumerate(labels)]
    # Serial puts so that exactly `kill_after` arrays of the shard are on disk.
    serial = ThreadPoolExecutor(max_workers=1)
    w._pool = lambda: serial
    writer = storage.create(path, m, keys, labels)
    state = {"shard": None, "puts": 0}
    real_put = w._put
    def put(array, selection, data):
        if state["shard"] == kill_shard:
            state["puts"] += 1
            if state["puts"] > kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        real_put(array, selection, data)
    w._put = put
    for v in range(2):
        for s in range(writer.num_shards):
            state["shard"], state["puts"] = (v * 100 + s), 0
            a, b = writer.shard_range(s)
            writer.write_shard(v, s, make_records(m, v, a, b, labels))
""")


@pytest.mark.integration
def test_sigkill_mid_shard_then_resume_equals_uninterrupted_write(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed.zarr"
    # Die in view 1, shard 3 after 4 of its 7 arrays are written, before its done bit.
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(killed), "103", "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    r = storage.open_cache(killed)
    missing = r.missing()
    assert missing[0] == (1, 3)
    assert len(missing) == r.num_shards - 3
    assert (killed / "topk_idx" / "c" / "1" / "3" / "0").exists()  # partly written shard
    resumed = write_cache(killed, M, LABELS)  # reopens and writes only the missing shards
    assert resumed.missing() == []
    reference = tmp_path / "reference.zarr"
    write_cache(reference, M, LABELS)
    got, want = zarr_arrays(killed), zarr_arrays(reference)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
