"""What `pld report` prints: one or several sweeps' seed summaries side by side, with the
differences their spread supports marked.

One sweep: every group is set against a reference group (`--baseline`, else the best
group for that figure). Several sweeps: grid points with the same name are matched and
every sweep is set against the first. Either way a difference is marked only under
`seed_summary.DIFFERENCE_RULE`, and the rule is printed with the tables.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from pld_pipeline.errors import ConfigError
from pld_pipeline.reports.seed_summary import DIFFERENCE_RULE, METRICS, Stats, differs, group_stats
from pld_pipeline.reports.sweep_report import format_table


def report_text(
    summaries: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    baseline: str | None = None,
    metrics: Sequence[str] = tuple(METRICS),
) -> str:
    """The report: a legend, one table per figure, the rule.

    Args:
        summaries: `seed_summary.summarize` outputs (summary.json contents).
        names: how each sweep is called in the legend (its folder).
        baseline: one sweep only: the group every other is compared with (default: the
            best group of each figure).
        metrics: which `METRICS` to show, in order.

    Raises:
        ConfigError: a baseline with several sweeps, or one that is not a group's name.
    """
    if baseline is not None and len(summaries) > 1:
        raise ConfigError(
            "--baseline picks a group inside one sweep; with several sweeps each one is "
            "compared with the first sweep at the same grid point. Drop --baseline or give "
            "one sweep."
        )
    letters = string.ascii_uppercase
    lines = [
        f"{letters[i]}: {name} ({_runs(s)} runs)"
        for i, (name, s) in enumerate(zip(names, summaries))
    ]
    for metric in metrics:
        label, higher, digits = METRICS[metric]
        if len(summaries) == 1:
            table = _within(summaries[0], metric, higher, digits, baseline)
        else:
            table = _across(summaries, metric, digits)
        lines += ["", f"{label}: mean ± sample std over seeds (n)", table]
    if len(summaries) > 1 and not _shared_points(summaries):
        lines += ["", "No grid point is in more than one sweep, so nothing was matched: "
                  "sweeps are matched by their grid fields other than seed (names above)."]  # fmt: skip
    lines += ["", DIFFERENCE_RULE]
    return "\n".join(lines)


def _shared_points(summaries: Sequence[Mapping[str, Any]]) -> set[str]:
    names = [{g["name"] for g in s["groups"]} for s in summaries]
    return {n for n in set().union(*names) if sum(n in each for each in names) > 1}


def _within(
    summary: Mapping[str, Any], metric: str, higher: bool, digits: int, baseline: str | None
) -> str:
    groups = {g["name"]: group_stats(g, metric) for g in summary["groups"]}
    if baseline is not None and baseline not in groups:
        raise ConfigError(
            f"--baseline {baseline!r} is not a grid point of {summary.get('sweep_dir')!r}; "
            f"its points are: {', '.join(groups)}."
        )
    ref = baseline or _best(groups, higher)
    delta = f"vs {ref}" + ("" if baseline else " (best)")
    rows = []
    for name, s in groups.items():
        rows.append({
            "grid point": name, "A": s.cell(digits), "min..max": _span(s, digits),
            delta: "reference" if name == ref else _delta(s, groups.get(ref), digits),
        })  # fmt: skip
    return format_table(rows, ["grid point", "A", "min..max", delta])


def _across(summaries: Sequence[Mapping[str, Any]], metric: str, digits: int) -> str:
    letters = string.ascii_uppercase
    per_sweep = [{g["name"]: group_stats(g, metric) for g in s["groups"]} for s in summaries]
    points: list[str] = []
    for groups in per_sweep:
        points += [name for name in groups if name not in points]
    columns = ["grid point", *letters[: len(summaries)]]
    columns += [f"{letters[i]} - A" for i in range(1, len(summaries))]
    rows = []
    for point in points:
        row: dict[str, Any] = {"grid point": point}
        ref = per_sweep[0].get(point)
        for i, groups in enumerate(per_sweep):
            stats = groups.get(point)
            row[letters[i]] = stats.cell(digits) if stats is not None else "-"
            if i:
                row[f"{letters[i]} - A"] = _delta(stats, ref, digits)
        rows.append(row)
    return format_table(rows, columns)


def _best(groups: Mapping[str, Stats], higher: bool) -> str | None:
    scored = [(s.mean, name) for name, s in groups.items() if s.mean is not None]
    if not scored:
        return None
    pick = max if higher else min
    return pick(scored, key=lambda item: item[0])[1]


def _delta(stats: Stats | None, ref: Stats | None, digits: int) -> str:
    """Signed difference of means, `*` when it exceeds the combined spread."""
    if stats is None or ref is None or stats.mean is None or ref.mean is None:
        return "-"
    mark = " *" if differs(stats, ref) else ""
    return f"{stats.mean - ref.mean:+.{digits}f}{mark}"


def _span(s: Stats, digits: int) -> str:
    return "-" if s.min is None else f"{s.min:.{digits}f}..{s.max:.{digits}f}"


def _runs(summary: Mapping[str, Any]) -> int:
    return sum(len(g["runs"]) for g in summary["groups"])
