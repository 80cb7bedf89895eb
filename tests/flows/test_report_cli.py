"""`pld report`: seed summaries of finished sweeps side by side, as the installed command prints them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pld_pipeline.reports.seed_summary import DIFFERENCE_RULE, summarize, write_summary

REPO = Path(__file__).resolve().parents[2]


def sweep_dir(path: Path, shift: float) -> Path:
    """A finished sweep's summary: losses kd and pld over three seeds, pld shifted by `shift`."""
    rows = []
    for loss, base in (("kd", 80.0), ("pld", 85.0)):
        for seed, noise in enumerate((-0.5, 0.0, 0.5)):
            top1 = base + noise + (shift if loss == "pld" else 0.0)
            rows.append({"run": f"loss.name={loss},seed={seed}", "loss.name": loss, "seed": seed,
                         "best_top1": top1, "final_top1": top1, "final_nll": 0.4,
                         "final_ece": 2.0})  # fmt: skip
    write_summary(summarize(rows, ["loss.name", "seed"], str(path)), path)
    return path


def pld(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)  # fmt: skip


def test_report_prints_sweeps_side_by_side_with_the_rule(tmp_path):
    a, b = sweep_dir(tmp_path / "a", 0.0), sweep_dir(tmp_path / "b", 2.0)
    done = pld("report", str(a), str(b))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"A: {a} (6 runs)" in out
    assert f"B: {b} (6 runs)" in out
    # One table per figure. Final top-1: kd equal; pld +2.0 > 0.5 + 0.5 (its stds): marked.
    block = out.split("final top-1 (%)")[1].split("\n\n")[0]
    rows = {line.split()[0]: line.split() for line in block.splitlines() if "=" in line}
    assert rows["loss.name=kd"][-1] == "+0.00"
    assert rows["loss.name=pld"][-2:] == ["+2.00", "*"]
    assert "85.00 ± 0.50 (3)" in block
    assert "87.00 ± 0.50 (3)" in block
    assert DIFFERENCE_RULE in out.replace("\n", " ")


def test_report_of_one_sweep_against_a_baseline(tmp_path):
    a = sweep_dir(tmp_path / "a", 0.0)
    done = pld("report", str(a), "--baseline", "loss.name=kd")
    assert done.returncode == 0, done.stderr
    assert "vs loss.name=kd" in done.stdout
    assert any(line.startswith("loss.name=pld") and line.rstrip().endswith("+5.00 *")
               for line in done.stdout.splitlines())  # fmt: skip


def test_report_errors_are_one_line_with_the_fix(tmp_path):
    done = pld("report", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "pld report: error: No summary.json" in done.stderr
    a = sweep_dir(tmp_path / "a", 0.0)
    done = pld("report", str(a), "--baseline", "loss.name=ce")
    assert done.returncode == 2
    assert "not a grid point" in done.stderr
    assert "loss.name=kd, loss.name=pld" in done.stderr
