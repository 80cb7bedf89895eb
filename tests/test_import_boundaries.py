"""The package arrows of DESIGN.md: storage imports no torch/Prefect, pld_pipeline no Prefect."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

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
