"""Deployments of every flow, served from one process, each with an optional cron schedule and trigger."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.concurrency import DEFAULT_GPU_LIMIT, ensure_gpu_limit
from flows.triggers import make_trigger
from pld_pipeline.configs.loading import read_yaml
from pld_pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

# Deployment names; the flows are imported when deployments are built (after the schedule
# file is read, so its errors come before torch loads).
DEPLOYMENTS = ("cache-teacher", "train-student", "sweep", "demo")
ENTRY_KEYS = ("cron", "parameters", "paused", "tags", "trigger")


def _flows() -> dict[str, Any]:
    from flows.cache_teacher import cache_teacher  # noqa: PLC0415
    from flows.demo import demo  # noqa: PLC0415
    from flows.sweep import sweep  # noqa: PLC0415
    from flows.train_student import train_student  # noqa: PLC0415

    return {
        "cache-teacher": cache_teacher,
        "train-student": train_student,
        "sweep": sweep,
        "demo": demo,
    }


def read_schedules(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read `{deployment: {cron: "0 3 * * *", parameters: {...}, paused: false, trigger: {...}}}`.

    Raises:
        ConfigError: an unknown deployment name or an entry that is not a mapping.
    """
    if path is None:
        return {}
    data = read_yaml(path)
    for name, entry in data.items():
        if name not in DEPLOYMENTS:
            raise ConfigError(
                f"Schedule file {str(path)!r} names deployment {name!r}; known: {', '.join(DEPLOYMENTS)}."
            )
        if not isinstance(entry, dict) or set(entry) - set(ENTRY_KEYS):
            raise ConfigError(
                f"Schedule for {name!r} in {str(path)!r} must be a mapping with keys "
                f"{', '.join(ENTRY_KEYS)}; got {entry!r}."
            )
        if "trigger" in entry:
            make_trigger(name, entry, str(path))  # refuse a bad trigger before serving
    return data


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
            )
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
