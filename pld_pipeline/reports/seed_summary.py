"""Seeds aggregated: a sweep's runs grouped by every grid field except `seed`, with their spread.

One seed says little about a loss: on the demo two losses 0.2 points apart swap places
from seed to seed. A sweep therefore reports, per group of runs that differ only in their
seed, n, mean, sample standard deviation (n - 1 in the denominator), min and max of each
figure, and two groups are said to differ only when their means are further apart than
their spreads added (`DIFFERENCE_RULE`).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pld_pipeline.errors import PLDError

# The figures aggregated over seeds: name -> (label, higher is better, decimals). NLL and ECE are
# the final epoch's, like final top-1; best top-1 is the maximum over evaluated epochs
# (chosen on the evaluation set, hence optimistic).
METRICS: dict[str, tuple[str, bool, int]] = {
    "best_top1": ("best top-1 (%)", True, 2),
    "final_top1": ("final top-1 (%)", True, 2),
    "final_nll": ("final NLL (nats)", False, 3),
    "final_ece": ("final ECE (%)", False, 2),
}
SEED_FIELD = "seed"
DIFFERENCE_RULE = (
    "* marks a difference of means larger than the two groups' sample standard deviations "
    "added (|mean_a - mean_b| > std_a + std_b, each over seeds, both n >= 2); an unmarked "
    "difference is within the seed-to-seed spread and is not supported by these runs."
)
SUMMARY_FILE = "summary.json"


class SweepSummaryError(PLDError, FileNotFoundError):
    """A sweep folder has no readable summary.json."""


@dataclass(frozen=True)
class Stats:
    """n, mean, sample std (None for n < 2), min and max of one figure over seeds."""

    n: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stats:
        """Stats of the values that are not None (a run without evaluation has None)."""
        kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not kept:
            return cls(0, None, None, None, None)
        std = statistics.stdev(kept) if len(kept) > 1 else None
        return cls(len(kept), statistics.fmean(kept), std, min(kept), max(kept))

    def cell(self, digits: int = 2) -> str:
        """`mean ± std (n)`; `mean (n=1)` without a spread; `-` without values."""
        if self.mean is None:
            return "-"
        if self.std is None:
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} ({self.n})"


def differs(a: Stats, b: Stats) -> bool:
    """True when the means differ by more than the two spreads added (`DIFFERENCE_RULE`)."""
    if a.n < 2 or b.n < 2 or a.mean is None or b.mean is None:
        return False
    return abs(a.mean - b.mean) > (a.std or 0.0) + (b.std or 0.0)


def point_name(point: Mapping[str, Any]) -> str:
    """`key=value,...` of a grid point without its seed ("all" when only seeds varied)."""
    return ",".join(f"{k}={_plain(v)}" for k, v in point.items()) or "all"


def summarize(
    rows: Sequence[Mapping[str, Any]], grid_keys: Sequence[str], sweep_dir: str = ""
) -> dict[str, Any]:
    """Group a sweep's result rows by every grid field except `seed` and describe each group.

    Args:
        rows: one per run, holding the grid fields and the `METRICS` keys (`run` names it).
        grid_keys: the sweep's grid fields, in grid order.
        sweep_dir: recorded in the summary.

    Returns:
        the content of summary.json: sweep_dir, group_by, metrics (labels), rule, and
        groups (in first-seen order) with point, name, runs, seeds and stats per metric.
    """
    group_by = [k for k in grid_keys if k != SEED_FIELD]
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        point = {k: row.get(k) for k in group_by}
        name = point_name(point)
        group = groups.setdefault(name, {"name": name, "point": point, "runs": [], "seeds": []})
        group["runs"].append(row.get("run"))
        group["seeds"].append(row.get(SEED_FIELD))
        group.setdefault("_rows", []).append(row)
    for group in groups.values():
        members = group.pop("_rows")
        group["stats"] = {m: asdict(Stats.of([r.get(m) for r in members])) for m in METRICS}
    return {
        "sweep_dir": str(sweep_dir),
        "group_by": group_by,
        "metrics": {m: label for m, (label, _, _) in METRICS.items()},
        "rule": DIFFERENCE_RULE,
        "groups": list(groups.values()),
    }


def group_stats(group: Mapping[str, Any], metric: str) -> Stats:
    """The `Stats` of one metric of one summary group."""
    return Stats(**group["stats"][metric])


def summary_markdown(summary: Mapping[str, Any], title: str = "") -> str:
    """The summary as a markdown table: one row per group, `mean ± std (n)` and [min, max]."""
    head = ["grid point", "n", *(label for label, _, _ in METRICS.values())]
    lines = [f"### {title}\n" if title else "", "| " + " | ".join(head) + " |",
             "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]  # fmt: skip
    for group in summary["groups"]:
        cells = [f"`{group['name']}`", str(len(group["runs"]))]
        for metric, (_, _, digits) in METRICS.items():
            s = group_stats(group, metric)
            span = f" [{s.min:.{digits}f}, {s.max:.{digits}f}]" if s.n > 1 else ""
            cells.append(s.cell(digits) + span)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\nmean ± sample std over seeds (n runs), [min, max]. Groups: runs that differ only "
        f"in `{SEED_FIELD}`. NLL and ECE (15 equal-width bins) are the final epoch's."
    )
    return "\n".join(line for line in lines if line != "") + "\n"


def write_summary(summary: Mapping[str, Any], sweep_dir: str | Path) -> tuple[Path, Path]:
    """Write sweep_dir/summary.json and summary.md; returns their paths."""
    out = Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / SUMMARY_FILE, out / "summary.md"
    json_path.write_text(json.dumps(summary, indent=2))
    md_path.write_text(summary_markdown(summary, title=f"Sweep {out}"))
    return json_path, md_path


def read_summary(sweep_dir: str | Path) -> dict[str, Any]:
    """summary.json of a finished sweep.

    Raises:
        SweepSummaryError: the folder or its summary.json is missing or unreadable.
    """
    path = Path(sweep_dir) / SUMMARY_FILE
    if not path.is_file():
        hint = (
            "it holds results.json from an older version: rerun the same `pld sweep` (finished "
            "runs are skipped) to write it"
            if (Path(sweep_dir) / "results.json").is_file()
            else "is it a sweep_dir of a finished `pld sweep`?"
        )
        raise SweepSummaryError(f"No {SUMMARY_FILE} in {str(sweep_dir)!r}; {hint}.")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SweepSummaryError(
            f"{str(path)!r} is not readable JSON ({exc}); rerun the sweep to rewrite it."
        ) from exc


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
