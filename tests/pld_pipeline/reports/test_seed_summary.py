"""Seed aggregation and the side-by-side report, against statistics worked out by hand."""

from __future__ import annotations

import json

import pytest

from pld_pipeline.errors import ConfigError
from pld_pipeline.reports.seed_summary import (
    DIFFERENCE_RULE,
    Stats,
    SweepSummaryError,
    differs,
    read_summary,
    summarize,
    summary_markdown,
    write_summary,
)
from pld_pipeline.reports.sweep_compare import report_text


def row(loss: str, seed: int, top1: float, ece: float, k: int = 5) -> dict:
    return {
        "run": f"loss.name={loss},k={k},seed={seed}", "loss.name": loss, "k": k, "seed": seed,
        "best_top1": top1 + 1.0, "final_top1": top1, "final_nll": 0.5, "final_ece": ece,
    }  # fmt: skip


ROWS = [
    row("kd", 0, 80.0, 4.0), row("kd", 1, 82.0, 6.0), row("kd", 2, 84.0, 5.0),
    row("pld", 0, 85.0, 2.0), row("pld", 1, 85.5, 2.5), row("pld", 2, 86.0, 3.0),
    row("ce", 0, 84.5, 1.0),
]  # fmt: skip


def test_groups_by_every_grid_field_but_seed_with_sample_std():
    summary = summarize(ROWS, ["loss.name", "k", "seed"], "sw")
    assert summary["group_by"] == ["loss.name", "k"]
    groups = {g["name"]: g for g in summary["groups"]}
    assert list(groups) == ["loss.name=kd,k=5", "loss.name=pld,k=5", "loss.name=ce,k=5"]
    kd = groups["loss.name=kd,k=5"]
    assert kd["seeds"] == [0, 1, 2]
    assert kd["point"] == {"loss.name": "kd", "k": 5}
    # 80, 82, 84: mean 82, sample variance (4 + 0 + 4) / (3 - 1) = 4, std 2.
    assert kd["stats"]["final_top1"] == {"n": 3, "mean": 82.0, "std": 2.0, "min": 80.0, "max": 84.0}
    assert kd["stats"]["best_top1"]["mean"] == 83.0
    # ECE 4, 6, 5: mean 5, variance (1 + 1 + 0) / 2 = 1.
    assert kd["stats"]["final_ece"]["std"] == pytest.approx(1.0)
    assert groups["loss.name=ce,k=5"]["stats"]["final_top1"] == {
        "n": 1, "mean": 84.5, "std": None, "min": 84.5, "max": 84.5,
    }  # fmt: skip
    assert set(summary["metrics"]) == {"best_top1", "final_top1", "final_nll", "final_ece"}


def test_only_seeds_varied_is_one_group_and_missing_values_are_not_counted():
    rows = [dict(row("pld", s, 80.0 + s, 1.0), final_ece=None if s == 1 else 1.0) for s in range(3)]
    (group,) = summarize(rows, ["seed"])["groups"]
    assert group["name"] == "all"
    assert len(group["runs"]) == 3
    assert group["stats"]["final_ece"]["n"] == 2
    assert Stats.of([]) == Stats(0, None, None, None, None)


def test_difference_rule_needs_gap_above_both_spreads():
    a = Stats(3, 82.0, 2.0, 80.0, 84.0)
    assert not differs(a, Stats(3, 85.0, 1.5, 84.0, 86.0))  # 3.0 < 2.0 + 1.5
    assert differs(a, Stats(3, 86.0, 1.5, 84.0, 88.0))  # 4.0 > 3.5
    assert not differs(a, Stats(1, 99.0, None, 99.0, 99.0))  # one seed has no spread
    assert not differs(Stats(3, 82.0, 0.0, 82.0, 82.0), Stats(3, 82.0, 0.0, 82.0, 82.0))


def test_summary_files_and_markdown(tmp_path):
    summary = summarize(ROWS, ["loss.name", "k", "seed"], str(tmp_path))
    json_path, md_path = write_summary(summary, tmp_path)
    assert read_summary(tmp_path) == json.loads(json_path.read_text()) == summary
    md = md_path.read_text()
    assert md == summary_markdown(summary, title=f"Sweep {tmp_path}")
    assert "| `loss.name=kd,k=5` | 3 | 83.00 ± 2.00 (3) [81.00, 85.00] | 82.00 ± 2.00 (3)" in md
    assert "84.50 (n=1)" in md


def test_report_of_one_sweep_marks_only_supported_differences():
    summary = summarize(ROWS, ["loss.name", "k", "seed"], "sw")
    text = report_text([summary], ["runs/sw"], metrics=["final_top1"])
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("loss.name")}
    # Best final top-1: pld (85.5 ± 0.5). kd: -3.5, and 3.5 > 2.0 + 0.5, so marked.
    assert "reference" in lines["loss.name=pld,k=5"]
    assert lines["loss.name=kd,k=5"].rstrip().endswith("-3.50 *")
    assert lines["loss.name=ce,k=5"].rstrip().endswith("-1.00")  # n = 1: never marked
    assert DIFFERENCE_RULE in text
    assert "A: runs/sw (7 runs)" in text
    # ECE: lower is better, so the best is pld (2.5), and kd's +2.5 exceeds 1.0 + 0.5.
    text = report_text([summary], ["runs/sw"], metrics=["final_ece"])
    assert "vs loss.name=ce,k=5 (best)" in text  # ce's single seed has the lowest ECE
    text = report_text([summary], ["sw"], baseline="loss.name=kd,k=5", metrics=["final_ece"])
    pld = next(line for line in text.splitlines() if line.startswith("loss.name=pld"))
    assert pld.rstrip().endswith("-2.50 *")


def test_report_of_two_sweeps_matches_grid_points():
    a = summarize(ROWS, ["loss.name", "k", "seed"], "a")
    shifted = [dict(r, final_top1=r["final_top1"] + (0.1 if r["loss.name"] == "kd" else 3.0))
               for r in ROWS if r["loss.name"] != "ce"]  # fmt: skip
    shifted.append(row("dist", 0, 70.0, 9.0))
    b = summarize(shifted, ["loss.name", "k", "seed"], "b")
    text = report_text([a, b], ["runs/a", "runs/b"], metrics=["final_top1"])
    lines = {
        line.split()[0]: line.split() for line in text.splitlines() if line.startswith("loss.")
    }
    assert lines["loss.name=kd,k=5"][-1] == "+0.10"  # within the spread: unmarked
    assert lines["loss.name=pld,k=5"][-2:] == ["+3.00", "*"]  # 3.0 > 0.5 + 0.5
    assert lines["loss.name=ce,k=5"][-2:] == ["-", "-"]  # only in A
    assert lines["loss.name=dist,k=5"][1] == "-"
    assert "nothing was matched" not in text
    other = summarize([dict(r, k=7) for r in ROWS], ["loss.name", "k", "seed"], "c")
    assert "nothing was matched" in report_text([a, other], ["a", "c"])
    with pytest.raises(ConfigError, match="one sweep"):
        report_text([a, b], ["a", "b"], baseline="loss.name=kd,k=5")
    with pytest.raises(ConfigError, match="not a grid point"):
        report_text([a], ["a"], baseline="loss.name=nope")


def test_missing_or_broken_summary_is_one_clear_error(tmp_path):
    with pytest.raises(SweepSummaryError, match="No summary.json"):
        read_summary(tmp_path)
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(SweepSummaryError, match="rerun the same `pld sweep`"):
        read_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(SweepSummaryError, match="not readable JSON"):
        read_summary(tmp_path)
