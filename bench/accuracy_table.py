"""The accuracy study's table (docs/benchmarks.md), from the figures `bench/accuracy.py` wrote.

    .venv/bin/python bench/accuracy_table.py bench/results/accuracy.json

Prints a markdown table (final top-1 and final ECE, mean ± sample std over seeds) and the
comparisons a reader asks for, each marked by the rule of `pld report` (difference of
means larger than the two standard deviations added).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pld_pipeline.reports.seed_summary import DIFFERENCE_RULE, Stats, differs

# (label, sweep, grid point) of every row, in reading order.
ARMS = (
    ("ce (no teacher)", "losses", "loss.name=ce"),
    ("kd (T = 4, ce_weight 0.1)", "losses", "loss.name=kd"),
    ("kd (T = 1)", "kd-t1", "loss.temperature=1.0"),
    ("kd (T = 4) from the full cache, dense targets", "kd-full", "all"),
    ("dist (T = 1)", "losses", "loss.name=dist"),
    ("dkd (T = 1, alpha = beta = 0.5)", "losses", "loss.name=dkd"),
    ("pld (T = 1, K = 5)", "losses", "loss.name=pld"),
    ("pld (K = 2)", "pld-k", "k=2"),
    ("pld (K = 1)", "pld-k", "k=1"),
)
# (question, arm a, arm b): is a - b supported by the seed spread?
COMPARISONS = (
    ("pld vs ce", "pld (T = 1, K = 5)", "ce (no teacher)"),
    ("pld vs kd (T = 4)", "pld (T = 1, K = 5)", "kd (T = 4, ce_weight 0.1)"),
    ("pld vs kd (T = 1)", "pld (T = 1, K = 5)", "kd (T = 1)"),
    ("pld vs dist", "pld (T = 1, K = 5)", "dist (T = 1)"),
    ("pld vs dkd", "pld (T = 1, K = 5)", "dkd (T = 1, alpha = beta = 0.5)"),
    ("kd T = 1 vs T = 4", "kd (T = 1)", "kd (T = 4, ce_weight 0.1)"),
    ("kd full vs top-5 cache", "kd (T = 4) from the full cache, dense targets",
     "kd (T = 4, ce_weight 0.1)"),
    ("pld K = 2 vs K = 5", "pld (K = 2)", "pld (T = 1, K = 5)"),
    ("pld K = 1 vs K = 5", "pld (K = 1)", "pld (T = 1, K = 5)"),
)  # fmt: skip
FIGURES = (("final_top1", "top-1 (%)"), ("final_ece", "ECE (%)"))


def arm_stats(data: dict[str, Any]) -> dict[str, dict[str, Stats]]:
    """label -> figure -> Stats, for the arms whose sweep has finished."""
    out = {}
    for label, sweep, point in ARMS:
        summary = data.get("sweeps", {}).get(sweep, {}).get("summary")
        if summary is None:
            continue
        group = next((g for g in summary["groups"] if g["name"] == point), None)
        if group is not None:
            out[label] = {m: Stats(**group["stats"][m]) for m, _ in FIGURES}
    return out


def markdown(data: dict[str, Any]) -> str:
    stats = arm_stats(data)
    sizes, teacher = data["sizes"], data.get("teacher", {})
    lines = [
        f"| student loss | n | {FIGURES[0][1]} | {FIGURES[1][1]} |",
        "| --- | ---: | ---: | ---: |",
    ]
    if teacher:
        lines.append(
            f"| teacher (small ResNet, ce; one run) | 1 | {teacher['final_top1']:.2f} | "
            f"{teacher['final_ece']:.2f} |"
        )
    for label, _, _ in ARMS:
        if label in stats:
            s = stats[label]
            n = s["final_top1"].n
            lines.append(f"| {label} | {n} | {s['final_top1'].cell()} | {s['final_ece'].cell()} |")
        else:
            lines.append(f"| {label} | - | not run yet | |")
    lines += [
        "",
        f"{sizes['train_images']} training / {sizes['val_images']} test images; teacher "
        f"{sizes['teacher_epochs']} epochs; students {sizes['student_epochs']} epochs over "
        f"{sizes['views']} cached views, seeds {sizes['seeds']}; mean ± sample std (n).",
        "",
        "| comparison | top-1 difference | ECE difference |",
        "| --- | ---: | ---: |",
    ]
    for question, a, b in COMPARISONS:
        if a in stats and b in stats:
            cells = [_diff(stats[a][m], stats[b][m]) for m, _ in FIGURES]
            lines.append(f"| {question} | {cells[0]} | {cells[1]} |")
    lines += ["", DIFFERENCE_RULE]
    return "\n".join(lines)


def _diff(a: Stats, b: Stats) -> str:
    if a.mean is None or b.mean is None:
        return "-"
    if min(a.n, b.n) < 2:
        return f"{a.mean - b.mean:+.2f} (one seed: no spread)"
    verdict = "**supported**" if differs(a, b) else "within spread"
    return f"{a.mean - b.mean:+.2f} ({verdict})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="docs/benchmarks.md table of bench/accuracy.py's figures"
    )
    parser.add_argument("json", nargs="?", default="bench/results/accuracy.json")
    args = parser.parse_args(argv)
    print(markdown(json.loads(Path(args.json).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
