"""Waiting on shard tasks without ever waiting forever, and making worker losses visible.

`wait_each` hands each finished future to a callback and, between them, runs a health
check (the Dask `ClusterWatch`), so a pass whose workers are all gone fails instead of
blocking on futures that will never finish. A lost worker's shards are logged and their
task runs set to `AwaitingRetry` in Prefect (the UI's state history shows it) before
Dask reruns them on another worker.

Those state writes are for the UI only, so they are bounded: a busy Prefect server (a
loaded machine, several temporary servers sharing one SQLite file) made each write wait
minutes through Prefect's own timeouts and retries, holding up the lost-workers bound
and the exit of a failed pass.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

import distributed
import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.futures import PrefectFuture
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.states import AwaitingRetry, Crashed, State

from flows.dask_watch import ClusterWatch
from pld_pipeline.errors import ShardTaskError

POLL_SECONDS = 2.0
STATE_WRITE_TIMEOUT_S = 5.0  # one task-run state write, not retried
STATE_WRITES_BUDGET_S = 10.0  # all the writes of one report
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


def shard_result(
    future: PrefectFuture,
    shard: int,
    watch: ClusterWatch | None,
    health: Callable[[], None] | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> dict[str, Any]:
    """The shard's outcome; a shard that killed every worker it ran on is a clear error.

    A finished shard's result is fetched from its worker. When that worker dies meanwhile,
    Dask reruns the shard and the fetch waits for a worker for as long as there is none,
    so the fetch is polled with `health()` in between (which raises once no usable worker
    is left for `lost_workers_timeout`).
    """
    try:
        return _result_polling(future, health, poll_seconds)
    except distributed.KilledWorker as exc:
        message = (
            f"shard {shard} was running on Dask workers that died, {exc.args[0] if exc.args else ''} "
            "more times than the scheduler allows (distributed.scheduler.allowed-failures): the "
            "shard itself likely kills its worker (memory, a crash in the teacher or decoder). "
            "Shards already written are kept; check the worker logs, then rerun to resume"
        )
        if watch is not None:
            watch.last_error = message
        set_states_bounded([(future, Crashed(message=message))])
        raise ShardTaskError(message) from exc
    except Exception as exc:
        if watch is not None:
            watch.last_error = f"shard {shard}: {type(exc).__name__}: {exc}"
        raise


def _result_polling(
    future: PrefectFuture, health: Callable[[], None] | None, poll_seconds: float
) -> Any:
    if health is None:
        return future.result()
    while True:
        try:
            return future.result(timeout=poll_seconds)
        except TimeoutError as exc:
            if "did not complete within" not in str(exc):
                raise  # the shard's own timeout, not the poll's
            health()


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
    retries = []
    for future, shard in lost:
        message = (
            f"shard {shard}: Dask worker {name} ({address}) was lost with this shard assigned "
            "(running or queued there); retrying on another worker (views already marked "
            "done are kept)"
        )
        run_logger.warning(message)
        retries.append((future, AwaitingRetry(message=message)))
    set_states_bounded(retries)


def mark_unfinished_crashed(futures: dict[PrefectFuture, int], message: str) -> None:
    """Leave no task run 'Running' forever in the UI when the pass stops early."""
    set_states_bounded([(f, Crashed(message=message)) for f in futures if not _dask_done(f)])


def set_states_bounded(
    updates: list[tuple[PrefectFuture, State]],
    timeout_s: float = STATE_WRITE_TIMEOUT_S,
    budget_s: float = STATE_WRITES_BUDGET_S,
) -> int:
    """Force these task-run states in Prefect, best effort and bounded; returns how many were set.

    Each request waits at most `timeout_s` and is not retried. The writes stop at the first
    one the server does not answer (or answers with a server error) and once `budget_s` is
    spent, so all of them take at most `budget_s + timeout_s`. A task run the server does
    not know (not created yet) is skipped. Writes given up are logged as a warning.
    """
    if not updates:
        return 0
    deadline = time.monotonic() + budget_s
    written = answered = 0
    problem = None
    try:
        with (
            temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}),
            get_client(sync_client=True, httpx_settings={"timeout": timeout_s}) as client,
        ):
            for future, state in updates:
                if time.monotonic() >= deadline:
                    problem = f"the {budget_s:g} s budget for them was spent"
                    break
                try:
                    client.set_task_run_state(future.task_run_id, state, force=True)
                    written += 1
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code >= 500:
                        raise
                answered += 1
    except Exception as exc:  # noqa: BLE001 - best effort: the server may be busy or gone
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        logger.warning(
            "Gave up setting %d of %d task-run state(s) in Prefect (%s); the UI may show "
            "those shards in an older state",
            len(updates) - answered, len(updates), problem,
        )  # fmt: skip
    return written


def _dask_key(future: PrefectFuture) -> str | None:
    wrapped = getattr(future, "wrapped_future", None)
    return str(wrapped.key) if wrapped is not None and hasattr(wrapped, "key") else None


def _dask_done(future: PrefectFuture) -> bool:
    wrapped = getattr(future, "wrapped_future", None)
    return bool(wrapped.done()) if wrapped is not None else future.state.is_final()
