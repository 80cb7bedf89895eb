"""Loading configs: a YAML file plus `dotted.key=value` overrides, into a pydantic model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pld_pipeline.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], value), the value read as YAML.

    YAML reading makes `k=10` an int, `temperatures=[1.0,2.0]` a list, `x=null` None.

    Raises:
        ConfigError: when the text has no `=` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"Override {text!r} is not of the form key=value; write e.g. views.num_views=4."
        )
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `data[path[0]][path[1]]... = value`, creating intermediate dicts."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"Cannot set {'.'.join(path)}: {part!r} holds {child!r}, not a section."
            )
        node = child
    node[path[-1]] = value


def get_dotted(data: dict[str, Any], path: str) -> Any:
    """`data[a][b][c]` for the path "a.b.c" (KeyError when a part is missing)."""
    node: Any = data
    for part in path.split("."):
        node = node[part]
    return node


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from `path` with a clear error when it is missing or not a mapping."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Config file {str(file)!r} does not exist; pass an existing YAML file.")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"Config file {str(file)!r} is not valid YAML: {_yaml_problem(exc)}; fix its syntax."
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {str(file)!r} must hold a mapping, not {type(data).__name__}."
        )
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and where it is (line and column from 1), on one line."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def load_config(
    model: type[ModelT],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> ModelT:
    """Build `model` from an optional YAML file, a base mapping and dotted overrides.

    Later sources win: base, then the file, then each override in order.

    Raises:
        ConfigError: unreadable file, malformed override, or values the model rejects
            (the message lists each bad field and why, on one line).
    """
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(read_yaml(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        set_dotted(data, keys, value)
    return validate_config(model, data)


def validate_config(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """`model.model_validate(data)` with pydantic's errors turned into one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "missing":  # its input is the whole enclosing mapping
                problems.append(f"{where}: required, not given")
            elif err["type"] == "extra_forbidden":
                problems.append(f"{where}: unknown field (a typo?)")
            else:
                problems.append(f"{where}: {err['msg']} (got {_short(err.get('input'))})")
        raise ConfigError(
            f"Invalid {model.__name__}: " + "; ".join(problems) + "; fix these fields and retry."
        ) from exc


def _short(value: Any, limit: int = 80) -> str:
    """repr of a rejected value, cut short (a whole mapping can be the input)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
