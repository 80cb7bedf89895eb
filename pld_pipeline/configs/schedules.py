"""schedules.yaml: cron schedules and event triggers of the served deployments, read and checked.

```yaml
sweep:
  cron: "0 4 * * 1"                  # optional
  parameters: {config: {base: {...}, grid: {...}, sweep_dir: /runs/weekly}}
  trigger:
    cache: "s3://caches/weekly*"     # which caches (trailing * = prefix); default: any
    parameters: {config: {max_parallel: 2}}   # optional overrides, Jinja templates allowed
```

A trigger starts its deployment whenever a cache is finalized, with the deployment's
parameters and the event's cache URL templated in (`{{ event.resource.id }}` into
`config.base.cache`, or `config.cache` for train-student) and, unless the folder already
holds a template, `/{{ event.resource.name }}` appended to `sweep_dir` (`run_dir`), so
each cache gets its own runs: a folder holding runs of another cache is refused. The
flows turn a `TriggerSpec` into Prefect's trigger; everything here is plain data.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pld_pipeline.configs.loading import read_yaml
from pld_pipeline.errors import ConfigError

DEPLOYMENTS = ("cache-teacher", "train-student", "sweep", "demo")
ENTRY_KEYS = ("cron", "parameters", "paused", "tags", "trigger")
TRIGGER_KEYS = ("cache", "parameters", "enabled")
CACHE_URL = "{{ event.resource.id }}"
CACHE_NAME = "{{ event.resource.name }}"


def location_id(location: str) -> str:
    """A cache, run or sweep location as an id: URLs as given, local paths absolute (so an
    id, and a trigger matching it, does not depend on the folder a run started from)."""
    location = location.rstrip("/") or location
    if "://" in location:
        return location
    return os.path.abspath(os.path.expanduser(location))


def read_schedules(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read `{deployment: {cron: "0 3 * * *", parameters: {...}, paused: false, trigger: {...}}}`.

    Raises:
        ConfigError: an unknown deployment name, an entry that is not a mapping, or a bad
            trigger (see `trigger_spec`).
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
            trigger_spec(name, entry, str(path), "")  # refuse a bad trigger before serving
    return data


@dataclass(frozen=True)
class TriggerSpec:
    """What a deployment's event trigger is: Prefect's `DeploymentEventTrigger` fields."""

    name: str
    description: str
    enabled: bool
    expect: set[str]
    match: dict[str, str]
    parameters: dict[str, Any]


def _readers() -> dict[str, tuple[tuple[str, ...], tuple[str, ...], type]]:
    """Deployments that read a cache: where their config takes it, their output folder, model."""
    from pld_pipeline.configs.train import SweepConfig, TrainConfig  # noqa: PLC0415

    return {
        "sweep": (("base", "cache"), ("sweep_dir",), SweepConfig),
        "train-student": (("cache",), ("run_dir",), TrainConfig),
    }


def trigger_spec(deployment: str, entry: dict[str, Any], source: str, event: str) -> TriggerSpec:
    """The trigger of one schedules.yaml entry, on `event` (see the module docstring).

    Raises:
        ConfigError: the deployment reads no cache, the entry lacks a config to run, or the
            trigger has unknown keys or gives an invalid config.
    """
    readers = _readers()
    where = f"{deployment!r} in {source!r}"
    if deployment not in readers:
        raise ConfigError(
            f"The trigger of {where} is not supported: a trigger starts a run on a newly "
            f"finalized cache, and only {' and '.join(readers)} read a cache."
        )
    trigger = entry["trigger"] or {}
    if not isinstance(trigger, dict) or set(trigger) - set(TRIGGER_KEYS):
        raise ConfigError(
            f"The trigger of {where} must be a mapping with keys {', '.join(TRIGGER_KEYS)}; "
            f"got {trigger!r}."
        )
    config = (entry.get("parameters") or {}).get("config")
    if not isinstance(config, dict):
        raise ConfigError(
            f"{where} has a trigger but no `parameters: {{config: ...}}`: give the "
            f"{deployment} config each new cache should run with."
        )
    cache_path, folder_path, model = readers[deployment]
    config = copy.deepcopy(config)
    _set(config, cache_path, CACHE_URL, where)
    folder = _get(config, folder_path)
    if isinstance(folder, str) and "{{" not in folder:
        _set(config, folder_path, f"{folder.rstrip('/')}/{CACHE_NAME}", where)
    parameters = _merge({"config": config}, trigger.get("parameters") or {})
    _check(model, parameters["config"], where)
    pattern = trigger.get("cache")
    match = {} if pattern is None else {"prefect.resource.id": _absolute_pattern(str(pattern))}
    return TriggerSpec(
        name=f"{deployment}-on-new-cache",
        description=(
            f"Runs {deployment} on each cache finalized ({event})"
            + (f" at {match['prefect.resource.id']}" if match else "")
            + f", with the cache's URL as config.{'.'.join(cache_path)}."
        ),
        enabled=bool(trigger.get("enabled", True)),
        expect={event},
        match=match,
        parameters=parameters,
    )


def _absolute_pattern(pattern: str) -> str:
    """Local paths become absolute, like the events' resource ids; a trailing * stays."""
    star = pattern.endswith("*")
    base = location_id(pattern[:-1] if star else pattern)
    if star and pattern[:-1].endswith("/"):
        base += "/"
    return base + ("*" if star else "")


def _check(model: type, config: dict[str, Any], where: str) -> None:
    """Validate the config as the triggered run will see it (templates as stand-in values)."""
    sample = _render_sample(config)
    try:
        model.model_validate(sample)
    except ValueError as exc:
        raise ConfigError(f"The triggered run's config of {where} is invalid: {exc}") from exc


def _render_sample(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _render_sample(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_sample(v) for v in value]
    if isinstance(value, str) and "{{" in value:
        return value.replace(CACHE_URL, "/caches/example").replace(CACHE_NAME, "example")
    return value


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any, where: str) -> None:
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(
                f"{where}: the trigger needs config.{'.'.join(path[:-1])} (a mapping) to put "
                "the cache URL in; give the base run there."
            )
        node = node[part]
    node[path[-1]] = value


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` laid over `base`, mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
