"""Task runners: threads on one machine, or a Dask cluster (local or existing) via prefect-dask."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from pld_pipeline.configs.cache import CacheConfig

logger = logging.getLogger(__name__)

RunnerKind = Literal["threads", "dask"]


@contextmanager
def shard_task_runner(config: CacheConfig) -> Iterator[tuple[TaskRunner, str | None]]:
    """The runner for a pass's shard tasks, and the Dask scheduler address (None: threads).

    Threads run in this process. Dask runs on an existing scheduler (`dask_address`) or
    on a local cluster started here (one single-threaded worker process per
    `dask_workers`) and closed afterwards.
    """
    if config.task_runner == "threads":
        yield ThreadPoolTaskRunner(max_workers=max(1, config.max_workers)), None
        return
    from prefect_dask import DaskTaskRunner  # noqa: PLC0415 - Dask loads for Dask runs only

    share_api_url_with_workers()
    from pld_pipeline.teacher.dask_cluster import connect, local_cluster  # noqa: PLC0415 - as above

    if config.dask_address:
        # Reach the scheduler first (bounded): Prefect's own client would fail with a bare
        # connection traceback, or wait on a scheduler that is not there.
        connect(config.dask_address, min(config.lost_workers_timeout, 60.0)).close()
        yield DaskTaskRunner(address=config.dask_address), config.dask_address
        return

    with local_cluster(
        config.dask_workers, config.gpus_per_task, config.lost_workers_timeout
    ) as address:
        yield DaskTaskRunner(address=address), address


@contextmanager
def gpu_restriction(kind: RunnerKind, gpus_per_task: int) -> Iterator[None]:
    """Inside: Dask tasks submitted need `gpus_per_task` 'GPU' resources (dask.annotate),
    so the scheduler sends each shard to a worker with a free GPU. A no-op otherwise."""
    if kind != "dask" or gpus_per_task <= 0:
        yield
        return
    import dask  # noqa: PLC0415 - as above

    with dask.annotate(resources={"GPU": gpus_per_task}):
        yield


def share_api_url_with_workers() -> None:
    """Point spawned Dask workers at this process's Prefect API.

    Without PREFECT_API_URL each worker process would start its own temporary server
    (5-13 s each) and its task runs would not show in the parent's UI.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - rarely needed

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    if url.startswith("http"):
        os.environ["PREFECT_API_URL"] = url.rstrip("/")
        logger.info("Dask workers will report to %s", url)
