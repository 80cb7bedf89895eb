"""What a Dask worker imports as this project's packages, asked before any shard task runs.

Standard library only, and shipped to workers by value (cloudpickle), so the probe runs
even on a worker that cannot import the project: that is exactly what it must report.
"""

from __future__ import annotations

import importlib
import sys

PACKAGES = ("storage", "pld_pipeline", "flows")
# One public name per package that only this project's package has.
MARKERS = {"storage": "open_cache", "pld_pipeline": "__version__", "flows": "PROJECT"}


def probe_project_imports() -> dict[str, dict[str, str | None]]:
    """For each package: where it resolves in this process, and the error if it is wrong.

    Returns:
        {package: {"file": path or None, "error": message or None}}.
    """
    found: dict[str, dict[str, str | None]] = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported to the client as text
            found[name] = {"file": None, "error": f"{type(exc).__name__}: {exc}"}
            continue
        file = getattr(module, "__file__", None)
        if file is None:
            where = ", ".join(getattr(module, "__path__", [])) or "?"
            error = f"'{name}' resolves to a namespace folder ({where}), not this project"
        elif not hasattr(module, MARKERS[name]):
            error = f"'{name}' resolves to {file}, another package of that name"
        else:
            error = None
        found[name] = {"file": file, "error": error}
    found["python"] = {"file": sys.executable, "error": None}
    return found
