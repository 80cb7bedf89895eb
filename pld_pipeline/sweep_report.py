"""Sweep results: one row per student run, and a plot of top-1 per loss and temperature."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_top1(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Grouped bars: x = loss, one bar per temperature, height = best top-1 (mean over seeds).

    Rows need `loss`, `temperature` (None = the loss default) and `best_top1` (percent).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row.get("best_top1") is None:
            continue
        temp = row.get("temperature")
        groups[(str(row["loss"]), "default" if temp is None else f"T={temp:g}")].append(
            float(row["best_top1"])
        )
    losses = sorted({loss for loss, _ in groups})
    temps = sorted({temp for _, temp in groups})
    width = 0.8 / max(len(temps), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(losses) + 2), 3.6), dpi=110)
    for j, temp in enumerate(temps):
        xs, ys = [], []
        for i, loss in enumerate(losses):
            values = groups.get((loss, temp))
            if values:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(sum(values) / len(values))
        bars = ax.bar(xs, ys, width=width, label=temp)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(losses)), losses)
    ax.set_ylabel("best top-1 (%)")
    all_values = [v for values in groups.values() for v in values]
    if all_values:
        ax.set_ylim(max(0.0, min(all_values) - 5), min(100.0, max(all_values) + 3))
    ax.set_title(title or "Student top-1 per loss and temperature")
    ax.legend(fontsize=7, loc="lower right")
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
