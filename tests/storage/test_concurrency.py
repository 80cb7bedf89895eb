"""Several processes writing shards of the same views at once, without locks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import storage
from storage.synthetic import make_labels, make_manifest, make_records

REPO = Path(__file__).resolve().parents[2]
N, C, V, S = 1000, 20, 2, 32

WORKER = textwrap.dedent("""
    import sys, time
    import storage
    from storage.synthetic import make_labels, make_manifest, make_records

    path, worker, workers, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    m = make_manifest(num_samples=1000, num_classes=20, k=4, num_views=2, shard_size=32)
    labels = make_labels(1000, 20)
    keys = [f"k{i:05d}" for i in range(1000)]
    writer = storage.create(path, m, keys, labels)  # reopens the cache the parent made
    while not __import__("os").path.exists(go):  # start together
        time.sleep(0.01)
    for v in range(m.num_views):
        for s in range(m.num_shards):
            # Interleaved: neighbouring shards of one view go to different processes.
            if (v * m.num_shards + s) % workers == worker:
                a, b = writer.shard_range(s)
                writer.write_shard(v, s, make_records(m, v, a, b, labels))
""")


def _setup(path):
    m = make_manifest(num_samples=N, num_classes=C, k=4, num_views=V, shard_size=S)
    labels = make_labels(N, C)
    return m, labels, storage.create(path, m, [f"k{i:05d}" for i in range(N)], labels)


@pytest.mark.integration
def test_two_processes_write_one_view_like_one_process(tmp_path):
    parallel = tmp_path / "parallel.zarr"
    _setup(parallel)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(parallel), str(w), "2", str(go)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(2)
    ]
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err

    m, labels, single = _setup(tmp_path / "single.zarr")
    for v in range(V):
        for s in range(single.num_shards):
            a, b = single.shard_range(s)
            single.write_shard(v, s, make_records(m, v, a, b, labels))

    got, want = storage.open_cache(parallel), storage.open_cache(tmp_path / "single.zarr")
    assert got.missing() == []
    assert want.missing() == []
    for v in range(V):
        g, w = got.load_view(v), want.load_view(v)
        for name in ("topk_idx", "topk_logp", "lse", "gt_logit", "crop", "flip", "bad"):
            np.testing.assert_array_equal(getattr(g, name), getattr(w, name), err_msg=name)
    np.testing.assert_array_equal(got.hw(), want.hw())
