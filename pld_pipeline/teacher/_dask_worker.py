"""What the pass runs on the Dask scheduler and workers themselves, shipped by value.

cloudpickle sends this module's code along (`register_pickle_by_value` in `dask_cluster`),
so it runs on a worker or scheduler that cannot import this project: a worker that
resolves `storage`, `pld_pipeline` or `flows` to something else is exactly what the
import probe must report. It imports only the standard library and distributed.
"""

from __future__ import annotations

import importlib
import sys

import distributed

PACKAGES = ("storage", "pld_pipeline", "flows")
# One public name per package that only this project's package has.
MARKERS = {"storage": "open_cache", "pld_pipeline": "__version__", "flows": "PROJECT"}
INSTALL_FIX = (
    "install pld-pipeline into the Python that runs `dask worker` on that machine "
    '(`pip install "pld-pipeline[s3]"` or `make install` from a checkout) and restart the '
    "worker; see the docs, Troubleshooting"
)


def import_problems() -> list[str]:
    """Where this process resolves each package of the project, when it is not this project."""
    problems = []
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported to the client as text
            problems.append(f"{type(exc).__name__}: {exc}")
            continue
        file = getattr(module, "__file__", None)
        if file is None:
            where = ", ".join(getattr(module, "__path__", [])) or "?"
            problems.append(f"'{name}' resolves to a namespace folder ({where}), not this project")
        elif not hasattr(module, MARKERS[name]):
            problems.append(f"'{name}' resolves to {file}, another package of that name")
    return problems


class ImportProbe(distributed.WorkerPlugin):
    """Checks a worker's imports when it joins (and on the workers there when registered).

    A failure on the workers present at registration reaches the client as this
    ImportError; a worker that joins later logs it, and its first shard fails with the
    import error it meets.
    """

    name = "pld-import-probe"

    def setup(self, worker: distributed.Worker) -> None:
        problems = import_problems()
        if problems:
            raise ImportError(
                f"Dask worker {worker.address} cannot import this project: "
                f"{'; '.join(problems)} (worker Python: {sys.executable}). Fix: {INSTALL_FIX}"
            )


def no_workers_timeout(dask_scheduler: distributed.Scheduler | None = None) -> float | None:
    """The scheduler's no-workers-timeout in seconds (None: it waits for workers forever)."""
    return dask_scheduler.no_workers_timeout


def set_no_workers_timeout(
    seconds: float | None, dask_scheduler: distributed.Scheduler | None = None
) -> None:
    """Set the value the scheduler read from `distributed.scheduler.no-workers-timeout`
    at start (it checks it every 250 ms, so a new value applies at once)."""
    dask_scheduler.no_workers_timeout = seconds
