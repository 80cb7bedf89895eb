"""Sweep results: a plot of the seed-aggregated summary, and plain-text tables."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pld_pipeline.reports.seed_summary import group_stats, summarize, write_summary


def plot_summary(summary: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Bars of final top-1 and final ECE per grid point: mean over seeds, error bars = std.

    `summary` is `seed_summary.summarize`'s output; a group with one seed has no error bar.
    """
    # matplotlib loads only for a plot (it is slow to import); the backend before pyplot.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = summary["groups"]
    names = [g["name"] for g in groups]
    panels = (("final_top1", "final top-1 (%)"), ("final_ece", "final ECE (%), lower is better"))
    fig, axes = plt.subplots(
        1, 2, figsize=(max(6.0, 1.2 * len(names) + 3), 3.8), dpi=110, squeeze=False
    )
    for ax, (metric, label) in zip(axes[0], panels):
        stats = [group_stats(g, metric) for g in groups]
        xs = [i for i, s in enumerate(stats) if s.mean is not None]
        means = [stats[i].mean for i in xs]
        errs = [stats[i].std or 0.0 for i in xs]
        # One seed has no spread: no error bar rather than a zero-length one.
        shown = [stats[i].std if stats[i].std is not None else float("nan") for i in xs]
        bars = ax.bar(xs, means, yerr=shown, capsize=3, color="#4c72b0", ecolor="black")
        ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], fontsize=7, padding=2)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(label)
        lows = [m - e for m, e in zip(means, errs)]
        highs = [m + e for m, e in zip(means, errs)]
        if metric == "final_top1" and means:
            ax.set_ylim(max(0.0, min(lows) - 5), min(100.0, max(highs) + 3))
        elif means:
            ax.set_ylim(0.0, max(highs) * 1.25 + 0.1)
    ns = sorted({len(g["runs"]) for g in groups})
    fig.suptitle(
        (title or "Sweep") + f": mean over seeds (n = {', '.join(map(str, ns))}), bars = std",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table (for terminals and README snippets)."""
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    line = "  ".join(col.ljust(w) for col, w in zip(columns, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def result_row(name: str, result: dict[str, Any], skipped: bool = False) -> dict[str, Any]:
    """One results-table row of a finished run (accuracies in percent)."""
    return {
        "run": name,
        "student": result["student"],
        "loss": result["loss"],
        "temperature": result["temperature"],
        "k": result["k"],
        "best_top1": result["best_top1"],
        "final_top1": result["final_top1"],
        "final_top5": result["final_top5"],
        "final_nll": result["final_nll"],
        "final_ece": result["final_ece"],
        "final_confidence": result["final_confidence"],
        "dropped_weight": result["mean_dropped_weight"],
        "views_seen": result["distinct_views"],
        "time_s": result["train_time_s"],
        "status": "skipped (finished before)" if skipped else "trained",
    }


TABLE_COLUMNS = (
    "run", "loss", "temperature", "k", "best_top1", "final_top1", "final_ece", "dropped_weight",
    "time_s", "status",
)  # fmt: skip


def write_sweep_reports(
    rows: Sequence[Mapping[str, Any]], grid: Sequence[str], sweep_dir: str | Path
) -> tuple[str, Path]:
    """A finished sweep's files: results.json (a row per run), summary.json and summary.md
    (runs grouped over seeds) and summary.png (final top-1 and ECE, mean and std).

    Returns:
        (the summary's markdown, the plot's path).
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "results.json").write_text(json.dumps(list(rows), indent=2))
    summary = summarize(rows, list(grid), str(sweep_dir))
    _, summary_md = write_summary(summary, sweep_dir)
    plot = plot_summary(summary, sweep_dir / "summary.png", title=f"Sweep {sweep_dir.name}")
    return summary_md.read_text(), plot
