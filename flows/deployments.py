"""Deployments of every flow, served from one process, each with an optional cron schedule."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from pld_pipeline.configs.loading import read_yaml
from pld_pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

# Deployment name -> flow, imported lazily so `pld serve --help` stays fast.
DEPLOYMENTS = ("cache-teacher", "train-student", "sweep", "demo")


def _flows() -> dict[str, Any]:
    from flows.cache_teacher import cache_teacher
    from flows.demo import demo
    from flows.sweep import sweep
    from flows.train_student import train_student

    return {"cache-teacher": cache_teacher, "train-student": train_student, "sweep": sweep, "demo": demo}


def read_schedules(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read `{deployment: {cron: "0 3 * * *", parameters: {...}, paused: false}}`.

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
        if not isinstance(entry, dict) or set(entry) - {"cron", "parameters", "paused", "tags"}:
            raise ConfigError(
                f"Schedule for {name!r} in {str(path)!r} must be a mapping with keys "
                f"cron, parameters, paused, tags; got {entry!r}."
            )
    return data


def build_deployments(schedules_path: str | Path | None = None) -> list[RunnerDeployment]:
    """One RunnerDeployment per flow; the flow's docstring is its description in the UI."""
    schedules = read_schedules(schedules_path)
    deployments = []
    for name, flow in _flows().items():
        entry = schedules.get(name, {})
        deployments.append(
            flow.to_deployment(
                name=name,
                cron=entry.get("cron"),
                paused=entry.get("paused"),
                parameters=entry.get("parameters"),
                tags=["pld-pipeline", *entry.get("tags", [])],
            )
        )
    return deployments


def serve_all(schedules_path: str | Path | None = None) -> None:
    """Serve every deployment until interrupted; runs start from the UI or on schedule."""
    serve(*build_deployments(schedules_path))
