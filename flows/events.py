"""Prefect events the pipeline emits, so automations can chain runs: a cache finalized or failed, a run or sweep finished.

| event | resource id | when |
| --- | --- | --- |
| `pld.cache.finalized` | the cache URL | `cache-teacher` passed its completeness and replay checks |
| `pld.cache.failed` | the cache URL | `cache-teacher` failed or crashed (payload: the reason) |
| `pld.run.finished` | the run_dir | a student run trained to its last epoch |
| `pld.sweep.finished` | the sweep_dir | every run of a sweep is finished |

A local path is made absolute, so the id (and a deployment trigger matching it) does not
depend on the directory a run was started from. `prefect.resource.name` is the last part
of the id (e.g. `weekly-2026-11-29`), handy in templates. Events sent inside a run are
related to its flow run and task run by Prefect itself.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.events import Event, emit_event

from flows.artifacts import run_logger_or
from pld_pipeline.configs.cache import CacheConfig, resolve_output
from pld_pipeline.configs.schedules import location_id
from pld_pipeline.configs.train import SweepConfig, TrainConfig

logger = logging.getLogger(__name__)

CACHE_FINALIZED = "pld.cache.finalized"
CACHE_FAILED = "pld.cache.failed"
RUN_FINISHED = "pld.run.finished"
SWEEP_FINISHED = "pld.sweep.finished"
# A run's headline figures (keys of its result.json) in `pld.run.finished`.
RUN_FIGURES = (
    "student", "loss", "temperature", "k", "epochs", "best_top1", "best_epoch", "final_top1",
    "final_top5", "distinct_views", "train_time_s",
)  # fmt: skip


def resource(location: str, kind: str) -> dict[str, str]:
    url = location_id(location)
    return {"prefect.resource.id": url, "prefect.resource.name": url.rsplit("/", 1)[-1],
            "pld.kind": kind}  # fmt: skip


def cache_related(cache: str | None) -> list[dict[str, str]]:
    return [] if cache is None else [{**resource(cache, "cache"), "prefect.resource.role": "cache"}]


def emit_cache_finalized(config: CacheConfig, report: dict[str, Any]) -> Event | None:
    """`pld.cache.finalized` for a cache that passed its checks; `report` is cache-teacher's."""
    check = report["replay_check"]
    payload = {
        "cache": location_id(config.output),
        "manifest_hash": report["manifest_hash"],
        "teacher": config.teacher.name,
        "format": report["format"],
        "k": report["k"],
        "temperatures": list(config.temperatures),
        "num_views": report["num_views"],
        "num_samples": report["num_samples"],
        "num_classes": report["num_classes"],
        "replay_max_error": check["max_abs_error"],
        "replay_samples": check["samples"],
        "bad_samples": len(report["bad_keys"]),
        "disk_mb": report["disk_mb"],
    }
    return _emit(CACHE_FINALIZED, resource(config.output, "cache"), payload)


def cache_failed_hook(flow, flow_run, state) -> None:  # noqa: ANN001 (Prefect's hook signature)
    """on_failure / on_crashed hook of cache-teacher: `pld.cache.failed` with the reason."""
    config = (flow_run.parameters or {}).get("config") or {}
    if hasattr(config, "model_dump"):
        config = config.model_dump()
    output = config.get("output") if isinstance(config, dict) else None
    # No output: the config itself was unreadable; the reason says why.
    output = resolve_output(output, flow_run.expected_start_time) if output else "unknown-cache"
    error = _exception_of(state)
    reason = str(error) if isinstance(error, BaseException) and str(error) else state.message
    payload = {
        "cache": location_id(output),
        "reason": reason,
        "error": type(error).__name__ if isinstance(error, BaseException) else None,
        "state": state.name,
        "flow_run": flow_run.name,
    }
    _emit(CACHE_FAILED, resource(output, "cache"), payload)


def emit_run_finished(config: TrainConfig, name: str, result: dict[str, Any]) -> Event | None:
    """`pld.run.finished` with the run's headline figures (accuracies in percent)."""
    payload = {
        "run": name,
        "run_dir": location_id(config.run_dir),
        "cache": location_id(config.cache) if config.cache else None,
        "manifest_hash": result["manifest_hash"],
        **{key: result[key] for key in RUN_FIGURES},
    }
    related = cache_related(config.cache)
    return _emit(RUN_FINISHED, resource(config.run_dir, "run"), payload, related)


def emit_sweep_finished(config: SweepConfig, rows: list[dict[str, Any]]) -> Event | None:
    """`pld.sweep.finished`: how many runs, the best one, and every run's best top-1."""
    scored = [r for r in rows if r.get("best_top1") is not None]
    best = max(scored, key=lambda r: r["best_top1"], default=None)
    payload = {
        "sweep_dir": location_id(config.sweep_dir),
        "cache": location_id(config.base.cache) if config.base.cache else None,
        "runs": len(rows),
        "trained": sum(r["status"] == "trained" for r in rows),
        "skipped": sum(r["status"] != "trained" for r in rows),
        "best": None if best is None else {
            key: best[key] for key in ("run", "loss", "temperature", "k", "best_top1")
        },
        "best_top1": {r["run"]: r["best_top1"] for r in rows},
    }  # fmt: skip
    related = cache_related(config.base.cache)
    return _emit(SWEEP_FINISHED, resource(config.sweep_dir, "sweep"), payload, related)


def _emit(
    name: str, primary: dict[str, str], payload: dict[str, Any], related: list | None = None
) -> Event | None:
    event = emit_event(name, resource=primary, payload=payload, related=related or None)
    run_logger_or(logger).info("Event %s for %s", name, primary["prefect.resource.id"])
    return event


def _exception_of(state) -> BaseException | None:  # noqa: ANN001 - a prefect State
    """The exception a Failed state holds (None for a crash or when it cannot be read)."""
    if not state.is_failed():
        return None
    try:
        error = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - the reason falls back to the state's message
        return None
    return error if isinstance(error, BaseException) else None
