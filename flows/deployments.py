"""Deployments of every flow, served from one process, each with an optional cron schedule and
a trigger from schedules.yaml (`pld_pipeline.configs.schedules` reads and checks the file)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.concurrency import DEFAULT_GPU_LIMIT, ensure_gpu_limit
from flows.events import CACHE_FINALIZED
from pld_pipeline.configs.schedules import read_schedules, trigger_spec


def _flows() -> dict[str, Any]:
    """The flows by deployment name, imported once the schedule file is read (its errors come
    before torch loads)."""
    from flows.cache_teacher import cache_teacher  # noqa: PLC0415
    from flows.demo import demo  # noqa: PLC0415
    from flows.sweep import sweep  # noqa: PLC0415
    from flows.train_student import train_student  # noqa: PLC0415

    return {"cache-teacher": cache_teacher, "train-student": train_student, "sweep": sweep,
            "demo": demo}  # fmt: skip


def make_trigger(deployment: str, entry: dict[str, Any], source: str) -> DeploymentEventTrigger:
    """Prefect's trigger for one schedules.yaml entry: a run on each finalized cache."""
    return DeploymentEventTrigger(
        **asdict(trigger_spec(deployment, entry, source, CACHE_FINALIZED))
    )


def build_deployments(schedules_path: str | Path | None = None) -> list[RunnerDeployment]:
    """One RunnerDeployment per flow; the flow's docstring is its description in the UI."""
    schedules = read_schedules(schedules_path)
    deployments = []
    for name, flow in _flows().items():
        entry = schedules.get(name, {})
        triggers = [make_trigger(name, entry, str(schedules_path))] if "trigger" in entry else []
        deployments.append(
            flow.to_deployment(
                name=name,
                cron=entry.get("cron"),
                paused=entry.get("paused"),
                parameters=entry.get("parameters"),
                triggers=triggers,
                tags=["pld-pipeline", *entry.get("tags", [])],
            )  # fmt: skip
        )
    return deployments


def serve_all(
    schedules_path: str | Path | None = None,
    gpu_limit: str = DEFAULT_GPU_LIMIT,
    gpu_slots: int | None = None,
) -> None:
    """Serve every deployment until interrupted; runs start from the UI, on schedule or
    on a trigger. First creates the `gpu_limit` concurrency limit when it is missing
    (`gpu_slots`, default one per GPU of this machine)."""
    deployments = build_deployments(schedules_path)
    ensure_gpu_limit(gpu_limit, gpu_slots)
    serve(*deployments)
