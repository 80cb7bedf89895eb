"""The finished pass tells the tail mass at every cached temperature: its log and the
cache-stats rows, against float64 loops over the arrays read with plain zarr."""

from __future__ import annotations

import logging
import math

import numpy as np
import zarr

import storage
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.teacher import cache_report
from storage.synthetic import make_labels, make_manifest, make_records

TEMPS = (1.0, 2.0, 4.0)


def _synthetic_cache(path) -> None:
    m = make_manifest(num_samples=40, num_classes=20, k=5, num_views=2, shard_size=16,
                      temperatures=TEMPS)  # fmt: skip
    labels = make_labels(40, 20)
    writer = storage.create(path, m, [f"c/{i:03d}.png" for i in range(40)], labels)
    for v in range(2):
        for s in range(m.num_shards):
            a, b = writer.shard_range(s)
            writer.write_shard(v, s, make_records(m, v, a, b, labels))


def _tails_by_hand(path) -> dict[float, np.ndarray]:
    """T -> [V, N] mass outside the top-K, one record at a time in Python floats."""
    g = zarr.open_group(str(path), mode="r")
    logp, lse = g["topk_logp"][...], g["lse"][...]
    out = {}
    for j, t in enumerate(TEMPS):
        tail = np.zeros(logp.shape[:2])
        for v in range(logp.shape[0]):
            for i in range(logp.shape[1]):
                kept = sum(
                    math.exp((float(x) + float(lse[v, i, 0])) / t - float(lse[v, i, j]))
                    for x in logp[v, i]
                )
                tail[v, i] = 1.0 - kept
        out[t] = tail
    return out


def test_finalize_logs_and_tabulates_the_tail_mass_at_every_temperature(tmp_path, caplog):
    path = tmp_path / "cache.zarr"
    _synthetic_cache(path)
    config = CacheConfig.model_validate({
        "dataset_root": str(tmp_path), "output": str(path), "teacher": {"name": "resnet18"},
        "min_label_agreement": 0.0,
    })  # fmt: skip
    with caplog.at_level(logging.INFO, logger="pld_pipeline.teacher.cache_report"):
        report = cache_report.finalize_cache(config).as_dict()
    tails = _tails_by_hand(path)
    (line,) = [r.getMessage() for r in caplog.records if "outside the top-5" in r.getMessage()]
    for t in TEMPS:
        mean = tails[t].mean()
        p95 = np.quantile(tails[t], 0.95, method="inverted_cdf")
        assert f"T={t:g} mean {mean:.3f}" in line
        stats = report["tail_overall"][f"{t:g}"]
        assert abs(stats["mean"] - mean) < 1e-9
        assert p95 <= stats["p95"] <= p95 + 0.0005 + 1e-12
    assert tails[4.0].mean() > tails[2.0].mean() > tails[1.0].mean() > 0.01  # a real tail

    rows = cache_report.stats_rows({**report, "replay_check": None})
    for v in range(2):
        for t in TEMPS:
            assert abs(rows[v][f"tail_mass_T{t:g}"] - tails[t][v].mean()) < 1e-9
    assert abs(rows[-1]["tail_mass_T4"] - tails[4.0].mean()) < 1e-9
    assert rows[-1]["tail_p95_T4"] == report["tail_overall"]["4"]["p95"]
    assert all(set(r) >= {"tail_mass_T1", "tail_mass_T2", "tail_mass_T4"} for r in rows)
