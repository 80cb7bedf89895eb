"""What a run shows in Prefect's UI: artifacts from library results (tables, markdown,
progress, keyed in lowercase-kebab) and its log."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

logger = logging.getLogger(__name__)


def run_logger_or(fallback: logging.Logger) -> logging.Logger | logging.LoggerAdapter:
    """The current flow or task run's logger (shown in the UI); `fallback` outside any run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return fallback


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    text = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")


def publish_table(key: str, rows: Sequence[Mapping[str, Any]], description: str = "") -> None:
    """A table artifact from a list of flat dicts (floats rounded for reading)."""
    clean = [{k: _readable(v) for k, v in row.items()} for row in rows]
    create_table_artifact(table=clean, key=artifact_key(key), description=description)


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)


def png_markdown(path: Path, title: str) -> str:
    """Markdown that embeds a PNG inline (the UI has no access to the run's disk)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n\nSaved at `{path}`.\n"


class Progress:
    """One progress artifact per long step, created once and updated in place."""

    def __init__(self, key: str, total: int, description: str) -> None:
        self.total = max(int(total), 1)
        self.done = 0
        self.description = description
        self.artifact_id: UUID = create_progress_artifact(
            progress=0.0, key=artifact_key(key), description=description
        )

    def advance(self, count: int = 1, note: str | None = None) -> None:
        self.set(self.done + count, note)

    def set(self, done: int, note: str | None = None) -> None:
        self.done = done
        percent = min(100.0, 100.0 * done / self.total)
        try:
            update_progress_artifact(
                self.artifact_id, percent, description=note or self.description
            )
        except Exception as exc:  # noqa: BLE001 - progress must never stop the work it reports
            logger.warning("progress artifact not updated (Prefect API unreachable?): %s", exc)


def _readable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(_readable(v)) for v in value)
    return value
