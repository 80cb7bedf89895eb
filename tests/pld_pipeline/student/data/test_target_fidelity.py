"""What a run's top-K targets cost its loss: the table lookups, the tail mass a run logs
(against float64 loops over the cache read with plain zarr), and the one-line warnings of
`pld train` (build_run) and `pld sweep` (warn_sweep)."""

from __future__ import annotations

import logging
import math

import pytest
import zarr
from train_testlib import train_config

from pld_pipeline.student.data import target_fidelity as tf
from pld_pipeline.student.run.build import build_run

# A hand-made table (not the measured one), so the lookups are checked against known values.
TABLE = {
    "source": {"classes": 1000},
    "errors": {
        "kd": {"1": {"1": 0.5, "10": 0.08, "100": 0.005},
               "4": {"1": 0.9, "10": 0.6, "100": 0.3}},
        "pld": {"1": {"1": 0.2, "10": 0.02, "100": 0.001},
                "4": {"1": 0.3, "10": 0.12, "100": 0.04}},
    },
    "tail_mass": {"1": {"1": 0.6, "10": 0.3, "100": 0.1},
                  "4": {"1": 0.99, "10": 0.95, "100": 0.8}},
}  # fmt: skip


@pytest.fixture(autouse=True)
def table(monkeypatch):
    monkeypatch.setattr(tf, "load_bands", lambda: TABLE)
    monkeypatch.setattr(tf, "_warned", set())


@pytest.mark.parametrize(
    ("loss", "t", "k", "c", "tail", "want"),
    [
        ("kd", 4.0, 50, 1000, None, (0.6, 4.0, 10, "K")),  # largest measured K <= 50
        ("kd", 1.0, 5, 1000, None, (0.5, 1.0, 1, "K")),
        ("kd", 3.0, 100, 1000, None, (0.3, 4.0, 100, "K")),  # T between: the next one up
        ("kd", 8.0, 10, 1000, None, (0.6, 4.0, 10, "K")),  # above the table: its largest
        ("pld", 1.0, 5, 10, 0.28, (0.02, 1.0, 10, "tail")),  # other C: the nearest tail
        ("pld", 4.0, 3, 10, 0.97, (0.3, 4.0, 1, "tail")),
    ],
)
def test_lookup_reads_the_entry_that_bounds_the_run(loss, t, k, c, tail, want):
    found = tf.lookup(loss, t, k, c, tail)
    assert (found.error, found.table_t, found.table_k, found.how) == want


def test_lookup_has_nothing_below_the_smallest_k_or_for_unmeasured_losses():
    assert tf.lookup("kd", 1.0, 0, 1000) is None
    assert tf.lookup("dist", 1.0, 10, 1000) is None
    assert tf.band_name(0.004) == "< 1%"
    assert tf.band_name(0.03) == "1%-5%"
    assert tf.band_name(0.2) == "> 10%"


def _tail_by_hand(cache, k, temperature) -> float:
    g = zarr.open_group(str(cache), mode="r")
    logp, lse = g["topk_logp"][0], g["lse"][0]
    temps = g.attrs["pld_cache"]["temperatures"]
    one, col = temps.index(1.0), temps.index(temperature)
    tails = [
        1.0 - sum(math.exp((float(x) + float(lse[i, one])) / temperature - float(lse[i, col]))
                  for x in logp[i, :k])
        for i in range(logp.shape[0])
    ]  # fmt: skip
    return sum(tails) / len(tails)


def test_pld_train_logs_the_tail_mass_and_warns_once_above_ten_percent(
    replay_cache, color_folder, tmp_path, caplog
):
    # kd at T=4 from top-2 of a 6-class teacher: the nearest tail of the table gives 0.9.
    config = train_config(replay_cache, color_folder, tmp_path / "kd", k=2,
                          loss={"name": "kd", "temperature": 4.0})  # fmt: skip
    with caplog.at_level(logging.INFO, logger=tf.__name__):
        build_run(config)
        build_run(config.model_copy(update={"run_dir": str(tmp_path / "kd2")}))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per cache, loss, T and K in a process
    (line,) = [r.getMessage() for r in warnings]
    assert "\n" not in line
    assert "kd at T=4 from top-2 targets" in line
    for fix in ("a lower T", "a larger K", "a full cache"):
        assert fix in line
    tail = _tail_by_hand(replay_cache, 2, 4.0)
    assert tail > 0.05
    assert f"leaves {tail:.3f} of its mass at T=4" in line

    caplog.clear()
    quiet = train_config(replay_cache, color_folder, tmp_path / "pld", loss={"name": "pld"})
    with caplog.at_level(logging.INFO, logger=tf.__name__):
        build_run(quiet)
    (info,) = [r for r in caplog.records if "Targets:" in r.getMessage()]
    assert info.levelno == logging.INFO
    assert f"leaves {_tail_by_hand(replay_cache, 4, 1.0):.3f} of its mass at T=1" in info.message
    assert "gradient within" in info.message


def test_pld_sweep_warns_once_per_grid_point_in_the_band(replay_cache, color_folder, tmp_path,
                                                        caplog):  # fmt: skip
    points = [
        (f"{loss}-seed{seed}", train_config(replay_cache, color_folder, tmp_path / f"{loss}{seed}",
                                            k=2, seed=seed,
                                            loss={"name": loss, "temperature": t}))
        for loss, t in (("kd", 4.0), ("pld", 1.0))
        for seed in (0, 1)
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger=tf.__name__):
        warned = tf.warn_sweep(points)
        build_run(points[0][1])  # the sweep's run of that point: no second warning
    assert warned == ["kd-seed0", "kd-seed1"]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [line.split(":")[0] for line in lines] == ["Grid point kd-seed0", "Grid point kd-seed1"]
