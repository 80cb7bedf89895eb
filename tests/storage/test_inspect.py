"""inspect(): the human summary, its figures against independent computations, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from storage_testlib import C, N, S, keys_for

import storage
from storage.summary import BAD_KEYS_SHOWN
from storage.synthetic import make_records

REPO = Path(__file__).resolve().parents[2]


def test_summary_figures(cache_copy):
    s = storage.summarize(cache_copy)
    assert (s.num_samples, s.num_views, s.k, s.num_classes, s.num_shards) == (N, 2, 5, C, 7)
    assert s.done_shards == 13
    assert s.missing == [(1, 2)]
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
    # At T = 4 (the other cached temperature): p_T = exp((logp + lse_1) / T - lse_T).
    lse = g["lse"][...]
    temps = g.attrs["pld_cache"]["temperatures"]
    one, four = temps.index(1.0), temps.index(4.0)

    def tail_at_4(v, i):
        kept = sum(
            np.exp((float(x) + float(lse[v, i, one])) / 4.0 - float(lse[v, i, four]))
            for x in logp[v, i]
        )
        return 1 - kept

    assert abs(s.tail_mass_at[0][4.0] - np.mean([tail_at_4(0, i) for i in range(N)])) < 1e-9
    assert abs(s.tail_mass_at[0][1.0] - tail) < 1e-9
    every = [tail_at_4(0, i) for i in range(N)] + [tail_at_4(1, i) for i in rows]
    assert abs(s.tail_overall[4.0]["mean"] - np.mean(every)) < 1e-9
    # The p95 is a histogram's upper bin edge: at most one bin (0.0005) above the exact one.
    exact_p95 = np.quantile(every, 0.95, method="inverted_cdf")
    assert exact_p95 <= s.tail_overall[4.0]["p95"] <= exact_p95 + 0.0005 + 1e-12
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
        f"T=4 {s.tail_mass_at[0][4.0]:.4f}",
        f"T=4 mean {s.tail_overall[4.0]['mean']:.3f} p95 {s.tail_overall[4.0]['p95']:.3f}",
    ):
        assert fragment in text, fragment
    assert storage.inspect(cache_copy) == text


@pytest.mark.integration
def test_cli_prints_the_summary_and_fails_cleanly(cache_copy, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(
        [sys.executable, "-m", "storage", str(cache_copy)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "13/14 (view, shard)" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "storage", str(tmp_path / "none")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("python -m storage: error: ")
    assert "does not exist" in lines[0]


@pytest.mark.integration
def test_no_submodule_shadows_the_inspect_function():
    # A module storage/inspect.py would replace the attribute storage.inspect (the function)
    # once imported; the command line lives in storage/__main__.py instead.
    code = (
        "import importlib.util, storage, storage.__main__, storage.summary\n"
        "from storage import inspect\n"
        "print(importlib.util.find_spec('storage.inspect') is None, "
        "inspect is storage.summary.inspect)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_bad_samples_are_counted_and_named(tmp_path, manifest, labels):
    # Rows 3, 40 and 77 marked bad in both views (as the pass does for an undecodable image),
    # row 90 only in view 1: a sample bad in any written view counts once.
    writer = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    bad_rows = {0: {3, 40, 77}, 1: {3, 40, 77, 90}}
    for v in range(manifest.num_views):
        for s in range(manifest.num_shards):
            a, b = writer.shard_range(s)
            records = make_records(manifest, v, a, b, labels)
            records["bad"] = np.array([i in bad_rows[v] for i in range(a, b)])
            writer.write_shard(v, s, records)
    keys = keys_for(labels)
    # The finishing step records why (as the pass's `finalize_cache` does); one has no reason.
    reasons = {keys[3]: "the file is empty (0 bytes)", keys[40]: "a symlink loop"}
    writer.record_bad_samples([keys[i] for i in (3, 40, 77, 90)], reasons)
    summary = storage.summarize(tmp_path / "c.zarr")
    assert summary.bad_count == 4
    assert summary.bad_keys == [keys[3], keys[40], keys[77], keys[90]]
    lines = str(summary).splitlines()
    first = next(j for j, x in enumerate(lines) if x.startswith("bad "))
    assert "4 sample(s) could not be decoded and are skipped by training" in lines[first]
    assert [x.strip() for x in lines[first + 1 : first + 5]] == [
        f"{keys[3]}: the file is empty (0 bytes)",
        f"{keys[40]}: a symlink loop",
        f"{keys[77]}: reason not recorded",
        f"{keys[90]}: reason not recorded",
    ]
    assert lines[first + 5].startswith("disk ")


def test_bad_keys_shown_are_the_first_ones(tmp_path, manifest, labels):
    writer = storage.create(tmp_path / "c.zarr", manifest, keys_for(labels), labels)
    rows = set(range(10, 10 + BAD_KEYS_SHOWN + 3))
    for v in range(manifest.num_views):
        for s in range(manifest.num_shards):
            a, b = writer.shard_range(s)
            records = make_records(manifest, v, a, b, labels)
            records["bad"] = np.array([i in rows for i in range(a, b)])
            writer.write_shard(v, s, records)
    summary = storage.summarize(tmp_path / "c.zarr")
    assert summary.bad_count == len(rows)
    assert summary.bad_keys == [keys_for(labels)[i] for i in sorted(rows)[:BAD_KEYS_SHOWN]]
    lines = str(summary).splitlines()
    first = next(j for j, x in enumerate(lines) if x.startswith("bad "))
    assert f"{len(rows)} sample(s)" in lines[first]
    shown = lines[first + 1 : first + 1 + BAD_KEYS_SHOWN]
    assert [x.split(":")[0].strip() for x in shown] == summary.bad_keys
    assert lines[first + 1 + BAD_KEYS_SHOWN].strip().startswith("... and 3 more")


def test_a_clean_cache_says_no_bad_samples(cache_copy):
    text = storage.inspect(cache_copy)
    assert "bad        none recorded" in text
