"""The finished pass: every (view, shard) checked, bad samples and their reasons recorded, the teacher's figures.

`finalize_cache` is the pass's last write; `stats_rows` and `stats_description` turn its
report into the table the flow publishes, and `require_label_agreement` fails a pass whose
labels do not follow the teacher's classes (the cache is kept, flagged).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import storage
from pld_pipeline import label_order
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.decoding import decode_problem
from pld_pipeline.teacher.cache_build import images_of
from storage.tail import tail_text

logger = logging.getLogger(__name__)


@dataclass
class CacheReport:
    """The finished cache's figures (what the flow publishes as a table)."""

    path: str
    manifest_hash: str  # storage.manifest_hash: the id runs on this cache record
    num_samples: int
    num_views: int
    format: str
    k: int
    num_classes: int
    disk_mb: float
    bytes_per_record: float
    compression_ratio: float
    top1: dict[int, float]
    tail_mass: dict[int, float]
    bad_keys: list[str]
    label_check: dict[str, Any] | None = None
    # view -> "T" -> mean tail mass at T; "T" -> {"mean", "p95"} over all views (top-K only).
    tail_mass_at: dict[int, dict[str, float]] | None = None
    tail_overall: dict[str, dict[str, float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def finalize_cache(config: CacheConfig) -> CacheReport:
    """Check that every (view, shard) is done, record bad samples, compute the stats, and
    check that the teacher agrees with the labels.

    A label agreement below `min_label_agreement` is recorded in the manifest
    (`label_check.flagged`) and returned, not raised, so the stats can be published first;
    call `require_label_agreement(report)` after that (the flow does).

    Raises:
        storage.IncompleteCacheError: some (view, shard) is missing (listed).
    """
    # The cache is opened once; the reader reads the writer's open store.
    writer = storage.open_writer(config.location())
    with writer.reader() as reader:
        reader.validate()
        bad = reader.bad_mask().any(axis=0)
        bad_keys = [str(k) for k in np.asarray(reader.keys)[bad]]
        if bad_keys:
            writer.record_bad_samples(bad_keys, bad_reasons(config, reader.manifest, bad_keys))
        summary = storage.summary_of(reader)
        content_id = storage.manifest_hash(reader.manifest)
    if summary.tail_overall:
        # Before the cache costs anyone a training run: what its top-K leaves out, per T.
        logger.info(
            "Cache %s: teacher mass outside the top-%d: %s (docs/choosing-k-t-precision.md "
            "says what that costs each loss)",
            config.output, summary.k, tail_text(summary.tail_overall),
        )  # fmt: skip
    label_check = None
    if summary.top1:  # some record could be decoded
        check = label_order.agreement_check(
            float(np.mean(list(summary.top1.values()))),
            int((~bad).sum()) * summary.num_views,
            summary.num_classes,
            config.min_label_agreement,
        )
        writer.record_label_check(check)
        label_check = asdict(check)
        if check.flagged:
            logger.error(label_order.mismatch_message(label_check, config.output))
    return CacheReport(
        path=config.output,
        manifest_hash=content_id,
        num_samples=summary.num_samples,
        num_views=summary.num_views,
        format=summary.format,
        k=summary.k,
        num_classes=summary.num_classes,
        disk_mb=summary.disk_bytes / 1e6,
        bytes_per_record=summary.bytes_per_record,
        compression_ratio=summary.compression_ratio,
        top1={int(v): float(t) for v, t in summary.top1.items()},
        tail_mass={int(v): float(t) for v, t in summary.tail_mass.items()},
        bad_keys=bad_keys,
        label_check=label_check,
        tail_mass_at={
            int(v): {f"{t:g}": float(m) for t, m in by_t.items()}
            for v, by_t in summary.tail_mass_at.items()
        },
        tail_overall={f"{t:g}": dict(s) for t, s in summary.tail_overall.items()},
    )


def bad_reasons(config: CacheConfig, manifest: storage.Manifest, keys: list[str]) -> dict[str, str]:
    """Why each sample the pass recorded as bad cannot be used, key -> reason, found by
    decoding it again now (bad samples are few; the pass's workers kept no reasons)."""
    dataset = images_of(config, manifest)
    reasons = {}
    for key in keys:
        problem = decode_problem(dataset.path_of(key))
        reasons[key] = problem or (
            "decodes now, but failed during the pass (a passing read error?); rebuild the "
            "cache with overwrite to include it"
        )
    return reasons


def require_label_agreement(report: dict[str, Any]) -> None:
    """Fail a pass whose labels were flagged by `finalize_cache` (the cache stays, flagged).

    Raises:
        errors.LabelOrderError: the teacher's top-1 against the labels was below the threshold.
    """
    label_order.require_agreement(report.get("label_check"), report["path"])


def stats_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per view, plus the replay check, for the flow's table artifact.

    Every row has a `tail_mass_T<t>` column per cached temperature (the mean mass outside
    the top-K at T; None for full logits); the "all" row holds the mean over every record
    and `tail_p95_T<t>` columns with the 95th percentile.
    """
    overall = report.get("tail_overall") or {}
    per_view = report.get("tail_mass_at") or {}
    temps = sorted(overall, key=float)
    rows = []
    for view, top1 in sorted(report["top1"].items(), key=lambda kv: int(kv[0])):
        at = per_view.get(view) or per_view.get(int(view)) or {}
        rows.append({
            "view": int(view),
            "teacher_top1_pct": 100.0 * top1,
            "tail_mass": report["tail_mass"].get(view),
            **{f"tail_mass_T{t}": at.get(t) for t in temps},
            **{f"tail_p95_T{t}": None for t in temps},
            "records": report["num_samples"],
            "bytes_per_record": report["bytes_per_record"],
        })  # fmt: skip
    check = report.get("replay_check") or {}
    rows.append({
        "view": "all",
        "teacher_top1_pct": 100.0 * float(np.mean(list(report["top1"].values()) or [0.0])),
        "tail_mass": None,
        **{f"tail_mass_T{t}": overall[t]["mean"] for t in temps},
        **{f"tail_p95_T{t}": overall[t]["p95"] for t in temps},
        "records": report["num_samples"] * report["num_views"],
        "bytes_per_record": report["bytes_per_record"],
        "disk_mb": report["disk_mb"],
        "compression_ratio": report["compression_ratio"],
        "bad_samples": len(report["bad_keys"]),
        "replay_max_abs_error": check.get("max_abs_error"),
        "replay_check": "passed" if check.get("passed") else "failed/skipped",
        "label_check": label_check_cell(report.get("label_check")),
    })  # fmt: skip
    return rows


def label_check_cell(check: dict[str, Any] | None) -> str:
    """The stats table's label-check entry: the flag first, then the figures."""
    if check is None:
        return "not checked"
    figures = f"top-1 {check['top1']:.4f} vs required {check['min_agreement']:.4f}"
    if check["flagged"]:
        return f"FLAGGED: LABEL MISMATCH ({figures}); labels probably not in the teacher's order"
    return f"passed ({figures})"


def stats_description(report: dict[str, Any]) -> str:
    """The stats table's description; a flagged cache says so first."""
    text = f"Teacher cache {report['path']}: per-view statistics, replay and label checks"
    if (report.get("label_check") or {}).get("flagged"):
        text = "LABEL MISMATCH (flagged). " + text
    return text
