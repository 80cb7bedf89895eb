"""The configuration reference (docs/configuration.md) generated from the pydantic models' fields.

`python -m pld_pipeline.configs.reference --update docs/configuration.md` rewrites the text
between the page's markers; a test keeps the page in sync with the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pld_pipeline.configs.cache import CacheConfig, TeacherConfig, ViewConfig
from pld_pipeline.configs.demo import DemoConfig
from pld_pipeline.configs.train import (
    LossConfig,
    OptimConfig,
    StudentConfig,
    SweepConfig,
    TrainConfig,
)

SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("cache (`pld cache`)", CacheConfig),
    ("cache: teacher", TeacherConfig),
    ("cache: views", ViewConfig),
    ("train (`pld train`)", TrainConfig),
    ("train: student", StudentConfig),
    ("train: loss", LossConfig),
    ("train: optim", OptimConfig),
    ("sweep (`pld sweep`)", SweepConfig),
    ("demo (`pld demo`)", DemoConfig),
)


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(see section)"
        return "(see section)" if isinstance(value, BaseModel) else f"`{value}`"
    return f"`{field.default}`"


def markdown_reference() -> str:
    """One table per config model: field, default, description."""
    parts = []
    for title, model in SECTIONS:
        rows = [f"## {title}", "", "| field | default | meaning |", "| --- | --- | --- |"]
        for name, field in model.model_fields.items():
            text = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{name}` | {_default(field)} | {text} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"


def update_page(path: str) -> None:
    """Replace the text between the page's config-reference markers."""
    file = Path(path)
    text = file.read_text()
    start_mark, end_mark = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    start = text.index(start_mark) + len(start_mark)
    end = text.index(end_mark)
    file.write_text(text[:start] + markdown_reference() + text[end:])


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update_page(sys.argv[2])
    else:
        sys.stdout.write(markdown_reference())
