"""Waiting on shard tasks without ever waiting forever, and making worker losses visible.

`wait_each` hands each finished future to a callback and, between them, runs a health
check (the Dask `ClusterWatch`), so a pass whose workers are all gone fails instead of
blocking on futures that will never finish. A lost worker's shards are logged and their
task runs set to `AwaitingRetry` in Prefect (the UI's state history shows it) before
Dask reruns them on another worker.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable
from typing import Any

import distributed
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.futures import PrefectFuture
from prefect.states import AwaitingRetry, Crashed

from flows.dask_watch import ClusterWatch
from pld_pipeline.errors import ShardTaskError

POLL_SECONDS = 2.0
logger = logging.getLogger(__name__)


def wait_each(
    futures: list[PrefectFuture],
    on_done: Callable[[PrefectFuture], None],
    health: Callable[[], None],
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Call `on_done` for each future as it finishes; `health()` at least every poll.

    `health` raises to stop waiting (e.g. no workers left); `on_done` raises to stop at
    the first failed shard.
    """
    finished: queue.SimpleQueue = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    for _ in range(len(futures)):
        while True:
            try:
                future = finished.get(timeout=poll_seconds)
                break
            except queue.Empty:
                health()
        on_done(future)
        health()


def wait_for_workers(watch: ClusterWatch, poll_seconds: float = POLL_SECONDS) -> int:
    """Block until the cluster has a usable worker whose imports passed the probe.

    Raises:
        WorkersLostError: none within `lost_workers_timeout`.
        WorkerEnvironmentError: a worker imports something else as this project.
    """
    while True:
        count = watch.check()
        if count:
            return count
        time.sleep(poll_seconds)


def shard_result(future: PrefectFuture, shard: int, watch: ClusterWatch | None) -> dict[str, Any]:
    """The shard's outcome; a shard that killed every worker it ran on is a clear error."""
    try:
        return future.result()
    except distributed.KilledWorker as exc:
        message = (
            f"shard {shard} was running on Dask workers that died, {exc.args[0] if exc.args else ''} "
            "more times than the scheduler allows (distributed.scheduler.allowed-failures): the "
            "shard itself likely kills its worker (memory, a crash in the teacher or decoder). "
            "Shards already written are kept; check the worker logs, then rerun to resume"
        )
        if watch is not None:
            watch.last_error = message
        _set_state(future, Crashed(message=message))
        raise ShardTaskError(message) from exc
    except Exception as exc:
        if watch is not None:
            watch.last_error = f"shard {shard}: {type(exc).__name__}: {exc}"
        raise


def report_lost_worker(
    address: str, name: str, keys: list[str], futures: dict[PrefectFuture, int]
) -> None:
    """Log which shards a lost worker was running and mark their task runs AwaitingRetry."""
    by_key = {_dask_key(f): (f, shard) for f, shard in futures.items()}
    lost = [by_key[k] for k in keys if k in by_key]
    run_logger = get_run_logger()
    if not lost:
        run_logger.warning("Dask worker %s (%s) was lost while idle", name, address)
        return
    for future, shard in lost:
        message = (
            f"shard {shard}: Dask worker {name} ({address}) was lost with this shard assigned "
            "(running or queued there); retrying on another worker (views already marked "
            "done are kept)"
        )
        run_logger.warning(message)
        _set_state(future, AwaitingRetry(message=message))


def mark_unfinished_crashed(futures: dict[PrefectFuture, int], message: str) -> None:
    """Leave no task run 'Running' forever in the UI when the pass stops early."""
    for future in futures:
        if not _dask_done(future):
            _set_state(future, Crashed(message=message))


def _dask_key(future: PrefectFuture) -> str | None:
    wrapped = getattr(future, "wrapped_future", None)
    return str(wrapped.key) if wrapped is not None and hasattr(wrapped, "key") else None


def _dask_done(future: PrefectFuture) -> bool:
    wrapped = getattr(future, "wrapped_future", None)
    return bool(wrapped.done()) if wrapped is not None else future.state.is_final()


def _set_state(future: PrefectFuture, state: Any) -> None:
    """Best effort: the server may itself be unreachable when a pass is failing."""
    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        client.set_task_run_state(future.task_run_id, state, force=True)
