"""Our code uses Prefect, prefect-dask and Dask through their public names only, and never
tells their errors apart by message text: both break silently on an upgrade.

Read from the source (no import): every `import`/`from ... import` of those packages, every
attribute taken from a name bound to them, and in a module that imports one of them (and
so talks to the engines) every attribute access on any object other than `self`/`cls`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("prefect", "prefect_dask", "distributed", "dask")
PACKAGES = ("flows", "pld_pipeline", "storage")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, foreign_objects: bool) -> list[str]:
    """`line: what` for each private name of an engine the source uses (see the docstring)."""
    tree = ast.parse(source)
    bound: set[str] = set()  # local names bound to an engine module or object
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ENGINES:
                    if any(_private(p) for p in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
                    bound.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ENGINES:
            if any(_private(p) for p in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module}")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                bound.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            owner = base.id if isinstance(base, ast.Name) else None
            if owner in bound or (foreign_objects and owner not in ("self", "cls")):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def message_matches(source: str) -> list[str]:
    """`line: code` for each `... in str(x)` / `... not in str(x)` comparison."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.In | ast.NotIn) for op in node.ops
        ):
            for side in node.comparators:
                if isinstance(side, ast.Call) and getattr(side.func, "id", None) == "str":
                    found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _sources() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]


def imports_an_engine(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(name.split(".")[0] in ENGINES for name in names):
            return True
    return False


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_private_name_of_an_engine(path: Path) -> None:
    source = path.read_text()
    assert private_uses(source, foreign_objects=imports_an_engine(source)) == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_library_message_is_matched(path: Path) -> None:
    assert message_matches(path.read_text()) == []


def test_the_checks_can_fail() -> None:
    """Each kind of use the checks look for is found in a planted source."""
    source = """
import prefect._internal.concurrency
from prefect.futures import _register_prefect_done_callback
from distributed import client as dc
import prefect_dask as pd
x = dc._reconnect
y = pd.task_runners._thing
z = future._final_state
w = self._mine
if "did not complete within" not in str(exc):
    pass
"""
    found = private_uses(source, foreign_objects=True)
    assert [line.split(":")[0] for line in found] == ["2", "3", "6", "7", "8"]
    assert private_uses(source, foreign_objects=False)[-1].startswith("7:")
    assert message_matches(source) == ["10: 'did not complete within' not in str(exc)"]
    assert imports_an_engine(source)
    assert not imports_an_engine("import numpy\nfrom storage import x\n")
