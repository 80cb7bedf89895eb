"""inspect(): the human summary, its figures against independent computations, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr
from storage_testlib import C, N, S

import storage

REPO = Path(__file__).resolve().parents[2]


def test_summary_figures(cache_copy):
    s = storage.summarize(cache_copy)
    assert (s.num_samples, s.num_views, s.k, s.num_classes, s.num_shards) == (N, 2, 5, C, 7)
    assert s.done_shards == 13 and s.missing == [(1, 2)]
    assert s.records_written == 2 * N - S
    # Independent figures straight from the zarr arrays (float64, plain loops).
    g = zarr.open_group(str(cache_copy), mode="r")
    idx, logp, labels = g["topk_idx"][...], g["topk_logp"][...], g["label"][...]
    hits = sum(int(idx[0, i, 0] == labels[i]) for i in range(N))
    assert abs(s.top1[0] - hits / N) < 1e-12
    rows = [i for i in range(N) if not 32 <= i < 48]  # shard 2 of view 1 is not written
    hits1 = sum(int(idx[1, i, 0] == labels[i]) for i in rows)
    assert abs(s.top1[1] - hits1 / len(rows)) < 1e-12
    tail = np.mean([1 - sum(np.exp(float(x)) for x in logp[0, i]) for i in range(N)])
    assert abs(s.tail_mass[0] - tail) < 1e-9
    total = sum(f.stat().st_size for f in Path(cache_copy).rglob("*") if f.is_file())
    assert s.disk_bytes == total
    per_record = 5 * 2 + 5 * 2 + 2 * 4 + 4 + 4 * 4 + 1 + 1  # idx, logp, lse, gt, crop, flip, bad
    assert abs(s.compression_ratio - s.records_written * per_record / s.view_bytes) < 1e-9
    text = str(s)
    for fragment in (
        "teacher    synthetic",
        "K=5  C=10",
        "N=100  V=2",
        "13/14 (view, shard)",
        "missing [(1, 2)]",
        f"teacher top-1 vs label {s.top1[0]:.4f}",
        "compression ratio",
        "B/record",
    ):
        assert fragment in text, fragment
    assert storage.inspect(cache_copy) == text


def test_cli_prints_the_summary_and_fails_cleanly(cache_copy, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(
        [sys.executable, "-m", "storage.inspect", str(cache_copy)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "13/14 (view, shard)" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "storage.inspect", str(tmp_path / "none")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr
