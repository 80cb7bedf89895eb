"""Task runners: threads on one machine, or a Dask cluster (local or existing) via prefect-dask."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

logger = logging.getLogger(__name__)

RunnerKind = Literal["threads", "dask"]


def make_task_runner(
    kind: RunnerKind = "threads",
    max_workers: int = 1,
    dask_workers: int = 2,
    dask_address: str | None = None,
    gpus_per_worker: int = 0,
) -> TaskRunner:
    """Build the runner for shard tasks.

    Args:
        kind: "threads" (one process) or "dask".
        max_workers: threads for the thread runner.
        dask_workers: size of a local Dask cluster (one process per worker, one thread each,
            so with GPUs, one worker owns one GPU).
        dask_address: an existing scheduler (tcp://host:8786); wins over dask_workers.
        gpus_per_worker: 'GPU' resources each local-cluster worker advertises (tasks that
            ask for them run only there; see `gpu_restriction`).
    """
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=max(1, max_workers))
    if kind != "dask":
        raise ValueError(f"Unknown task runner {kind!r}; use 'threads' or 'dask'.")
    from prefect_dask import DaskTaskRunner

    share_api_url_with_workers()
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    cluster_kwargs = {
        "n_workers": max(1, dask_workers),
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
    }
    if gpus_per_worker:
        cluster_kwargs["resources"] = {"GPU": gpus_per_worker}
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs)


@contextmanager
def gpu_restriction(kind: RunnerKind, gpus_per_task: int) -> Iterator[None]:
    """Inside: Dask tasks submitted need `gpus_per_task` 'GPU' resources (dask.annotate),
    so the scheduler sends each shard to a worker with a free GPU. A no-op otherwise."""
    if kind != "dask" or gpus_per_task <= 0:
        yield
        return
    import dask

    with dask.annotate(resources={"GPU": gpus_per_task}):
        yield


def share_api_url_with_workers() -> None:
    """Point spawned Dask workers at this process's Prefect API.

    Without PREFECT_API_URL each worker process would start its own temporary server
    (5-13 s each) and its task runs would not show in the parent's UI.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    if url.startswith("http"):
        os.environ["PREFECT_API_URL"] = url.rstrip("/")
        logger.info("Dask workers will report to %s", url)
