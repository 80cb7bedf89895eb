"""The package arrows of DESIGN.md: storage imports no torch/Prefect, pld_pipeline no Prefect."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "storage": ("torch", "torchvision", "prefect", "prefect_dask", "pld_pipeline", "flows"),
    "pld_pipeline": ("prefect", "prefect_dask", "flows"),
}


def _modules_loaded_by(package: str) -> set[str]:
    """Import every module of `package` in a fresh interpreter; return sys.modules' top names."""
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        import {package}
        for info in pkgutil.walk_packages({package}.__path__, "{package}."):
            if info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)
        print("\\n".join(sorted({{name.split(".")[0] for name in sys.modules}})))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


@pytest.mark.integration
@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports_upward(package: str) -> None:
    loaded = _modules_loaded_by(package)
    leaked = sorted(loaded.intersection(FORBIDDEN[package]))
    assert leaked == [], f"{package} pulled in {leaked}"


# The wings of pld_pipeline (CONTRIBUTING.md, "Where things go"): the student reads what the teacher wrote, the
# demo drives both; nothing points back.
WING_FORBIDDEN = {
    "pld_pipeline.teacher": ("pld_pipeline.student", "pld_pipeline.demo"),
    "pld_pipeline.student": ("pld_pipeline.demo",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, top_level_only: bool) -> set[str]:
    """Dotted names `path` imports (`from a import b` gives both a and a.b)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _module_name(path if path.name == "__init__.py" else path.parent)
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _pld_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO / "pld_pipeline").rglob("*.py"))}


@pytest.mark.parametrize("wing", sorted(WING_FORBIDDEN))
def test_wing_never_imports_a_later_wing(wing: str) -> None:
    bad = [
        f"{name} imports {target}"
        for name, path in _pld_modules().items()
        if name == wing or name.startswith(wing + ".")
        for target in sorted(_imported(path, top_level_only=False))
        if target.startswith(WING_FORBIDDEN[wing])
    ]
    assert bad == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets, as [a, b, ..., a]."""
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = "open"
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return cycles


def _import_graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = _pld_modules()
    return {
        name: {t for t in _imported(path, top_level_only) if t in modules and t != name}
        for name, path in modules.items()
    }


def test_no_import_cycle_at_module_level() -> None:
    graph = _import_graph(top_level_only=True)
    assert graph["pld_pipeline.student.run.train"] >= {"pld_pipeline.student.run.ddp"}
    assert _cycles(graph) == []


def test_no_import_cycle_in_the_wings_even_through_lazy_imports() -> None:
    """Not even a function-level import closes a cycle in a wing (ddp.py's torchrun entry
    once imported train.py, which imports ddp.py)."""
    wings = ("pld_pipeline.teacher", "pld_pipeline.student", "pld_pipeline.demo")
    graph = {
        name: {t for t in targets if t.startswith(wings)}
        for name, targets in _import_graph(top_level_only=False).items()
        if name.startswith(wings)
    }
    assert _cycles(graph) == []


def test_cycle_checks_can_fail(tmp_path: Path) -> None:
    """The parser reads both import spellings and the walk finds a planted cycle."""
    (tmp_path / "a.py").write_text("from pld_pipeline.student.run import ddp\n")
    (tmp_path / "b.py").write_text("import pld_pipeline.student.run.train\n")
    assert "pld_pipeline.student.run.ddp" in _imported(tmp_path / "a.py", top_level_only=True)
    assert "pld_pipeline.student.run.train" in _imported(tmp_path / "b.py", top_level_only=True)
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
