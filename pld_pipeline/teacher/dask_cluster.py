"""The Dask cluster of a teacher pass: its settings, its workers' imports, and its events.

Failure handling is Dask's own. The scheduler reruns the shards of a lost worker
(`distributed.scheduler.allowed-failures` bounds how often one shard may kill its
worker), fails the shards that waited `no-workers-timeout` without a worker
(`NoWorkerError`, or `NoValidWorkerError` when no worker has the 'GPU' resources), and a
client that loses its scheduler cancels its futures. This module sets
`no-workers-timeout` to the pass's `lost_workers_timeout`, checks every worker's imports
with a `WorkerPlugin` before it runs a shard, turns the scheduler's events into log lines
(a lost worker and the shards it was running), and Dask's errors into ours.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import dask
import distributed
from distributed.comm import get_address_host_port
from distributed.scheduler import NoValidWorkerError, NoWorkerError

from pld_pipeline.errors import (
    PLDError,
    SchedulerUnreachableError,
    ShardTaskError,
    WorkerEnvironmentError,
    WorkersLostError,
)
from pld_pipeline.teacher import _dask_worker

logger = logging.getLogger(__name__)

# Shipped by value: a worker that cannot import this project must still run the probe.
cloudpickle.register_pickle_by_value(_dask_worker)

NO_WORKERS_TIMEOUT = "distributed.scheduler.no-workers-timeout"
SHARD_TOPIC = "pld-shard-started"
CLIENT_TIMEOUT_S = 30.0  # connecting, and Dask's reconnection before it gives up
RESULT_WAIT_S = 60.0  # the longest a finished shard's result fetch may take before a check


@contextmanager
def local_cluster(workers: int, gpus_per_worker: int, lost_workers_timeout: float) -> Iterator[str]:
    """A LocalCluster of single-threaded worker processes; yields its scheduler address.

    Its scheduler fails shards that wait `lost_workers_timeout` s without a worker. With
    GPUs, each worker advertises `gpus_per_worker` 'GPU' resources for the shard tasks.
    """
    kwargs: dict[str, Any] = {"n_workers": max(1, workers), "threads_per_worker": 1,
                              "processes": True, "dashboard_address": None}  # fmt: skip
    if gpus_per_worker:
        kwargs["resources"] = {"GPU": gpus_per_worker}
    with dask.config.set({NO_WORKERS_TIMEOUT: f"{lost_workers_timeout}s"}):
        cluster = distributed.LocalCluster(**kwargs)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@contextmanager
def gpu_restriction(gpus_per_task: int) -> Iterator[None]:
    """Inside: Dask tasks submitted need `gpus_per_task` 'GPU' resources (`dask.annotate`),
    so the scheduler sends each shard to a worker with a free GPU (none: no restriction)."""
    if gpus_per_task <= 0:
        yield
        return
    with dask.annotate(resources={"GPU": gpus_per_task}):
        yield


def connect(address: str, timeout: float) -> distributed.Client:
    """A client of the scheduler at `address`, connected within `timeout` s.

    Raises:
        SchedulerUnreachableError: no scheduler answered there.
    """
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachableError(
            f"cannot reach the Dask scheduler at {address} ({exc}); start it "
            "(`dask scheduler`) or fix --dask-address"
        ) from exc


def announce_shard(shard: int) -> None:
    """Tell the pass (through the scheduler's event log) that this Dask worker starts
    `shard`, so a lost worker's shards can be named; nothing outside a Dask worker."""
    try:
        worker = distributed.get_worker()
    except ValueError:  # threads: no Dask worker
        return
    worker.log_event(
        SHARD_TOPIC, {"shard": shard, "worker": worker.address, "name": str(worker.name)}
    )


@dataclass
class PassCluster:
    """The pass's view of its Dask cluster, for as long as its shards run.

    Args:
        address: the scheduler, tcp://host:port.
        lost_workers_timeout: seconds a shard may wait with no usable worker before the
            pass fails (the scheduler's no-workers-timeout); also the wait for a first worker.
    """

    address: str
    lost_workers_timeout: float
    client: distributed.Client | None = None
    most_workers: int = 0  # the most workers seen at once, for the lost-workers message
    restore_timeout: bool = False
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    present: set[str] = field(default_factory=set)  # worker addresses
    names: dict[str, str] = field(default_factory=dict)  # worker address -> name
    shards_on: dict[str, set[int]] = field(default_factory=dict)  # worker -> shards started

    def __enter__(self) -> PassCluster:
        self.client = connect(self.address, CLIENT_TIMEOUT_S)
        try:
            self._bound_waits()
            self.client.subscribe_topic("all", self.events.put)
            self.client.subscribe_topic(SHARD_TOPIC, self.events.put)
            self._wait_for_a_worker()
            self._probe_imports()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is None:
            return
        if self.restore_timeout and self.client.status == "running":
            with contextlib.suppress(OSError):  # the scheduler is gone: nothing to restore
                self.client.run_on_scheduler(_dask_worker.set_no_workers_timeout, None)
        self.client.close(timeout=10)
        self.client = None

    def _bound_waits(self) -> None:
        """Give the scheduler a no-workers-timeout when it has none (a scheduler started by
        hand): Dask reads the setting once, at start, so the pass sets the value it fills
        for its duration (`Client.run_on_scheduler`); a scheduler's own value stands."""
        own = self.client.run_on_scheduler(_dask_worker.no_workers_timeout)
        if own is None:
            self.client.run_on_scheduler(
                _dask_worker.set_no_workers_timeout, self.lost_workers_timeout
            )
            self.restore_timeout = True
        else:
            self.lost_workers_timeout = float(own)
        logger.info(
            "Dask scheduler %s fails a shard that waits %g s without a worker "
            "(no-workers-timeout)", self.address, self.lost_workers_timeout,
        )  # fmt: skip

    def _wait_for_a_worker(self) -> None:
        try:
            self.client.wait_for_workers(1, timeout=self.lost_workers_timeout)
        except TimeoutError as exc:
            raise WorkersLostError(self._lost_message(joined=False)) from exc
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        self.present = set(workers)
        self.names = {address: str(w.get("name", address)) for address, w in workers.items()}
        self.most_workers = len(self.present)

    def _probe_imports(self) -> None:
        """Every worker, now and later, checks its imports of this project before it runs a
        shard; a worker that resolves them elsewhere fails the pass here with the fix."""
        try:
            self.client.register_plugin(_dask_worker.ImportProbe())
        except ImportError as exc:
            raise WorkerEnvironmentError(str(exc)) from exc

    def report_events(self, run_logger: Any, unfinished: set[int]) -> None:
        """Log what the scheduler reported since the last call: shards started on a
        worker, and workers lost with the `unfinished` shards they were running."""
        while not self.events.empty():
            _, event = self.events.get()
            action, worker = event.get("action"), event.get("worker")
            if "shard" in event:
                self.shards_on.setdefault(worker, set()).add(int(event["shard"]))
                self.names[worker] = event["name"]
            elif action == "add-worker":
                self.present.add(worker)
                self.most_workers = max(self.most_workers, len(self.present))
            elif action == "remove-worker":
                self.present.discard(worker)
                self._report_lost(run_logger, worker, unfinished)

    def _report_lost(self, run_logger: Any, worker: str, unfinished: set[int]) -> None:
        name = self.names.get(worker, worker)
        lost = sorted(self.shards_on.pop(worker, set()) & unfinished)
        if not lost:
            run_logger.warning("Dask worker %s (%s) was lost while idle", name, worker)
        for shard in lost:
            run_logger.warning(
                "shard %d: Dask worker %s (%s) was lost with this shard assigned (running "
                "there); retrying on another worker (views already marked done are kept)",
                shard, name, worker,
            )  # fmt: skip

    def outcome(self, future: Any, shard: int) -> Any:
        """The result of a finished shard's `future`, with Dask's errors in the pass's terms.

        The watchdog for the one case no engine setting bounds: the scheduler dying while
        the result is fetched (the client asks the scheduler to gather it; that request
        may wait on its connection). The fetch is bounded by `RESULT_WAIT_S` and retried
        only while the scheduler is not lost (`scheduler_lost`).
        """
        while True:
            started = time.monotonic()
            try:
                return future.result(timeout=RESULT_WAIT_S)
            except Exception as exc:
                stalled = isinstance(exc, TimeoutError) and (
                    time.monotonic() - started >= RESULT_WAIT_S
                )
                if stalled and not self.scheduler_lost():
                    continue
                error = self.shard_error(exc, shard)
                if error is exc:
                    raise
                raise error from exc

    def scheduler_lost(self) -> bool:
        """Whether the scheduler is gone: this pass's client has lost it (its status leaves
        "running" when the scheduler's connection drops; the shards' client may notice
        first, so this waits up to 2 s), or its port refuses a new TCP connection."""
        deadline = time.monotonic() + 2.0
        while self.client is not None and self.client.status == "running":
            if time.monotonic() >= deadline:
                return not _accepts_connections(self.address)
            time.sleep(0.1)
        return self.client is not None or not _accepts_connections(self.address)

    def shard_error(self, exc: BaseException, shard: int) -> BaseException:
        """The pass's error for a shard that Dask gave up on (else `exc` itself).

        A cancelled shard, or a connection error while fetching its result, means a lost
        scheduler when `scheduler_lost` says so."""
        lost = isinstance(exc, CancelledError | OSError) and not isinstance(exc, PLDError)
        if lost and self.scheduler_lost():
            return SchedulerUnreachableError(
                f"lost the Dask scheduler at {self.address} ({type(exc).__name__}: "
                f"{exc}); the shards written so far are kept: restart the scheduler and "
                "workers, then rerun the same command to resume"
            )
        if isinstance(exc, NoWorkerError | NoValidWorkerError):
            return WorkersLostError(self._lost_message(joined=True))
        if isinstance(exc, distributed.KilledWorker):
            return ShardTaskError(
                f"shard {shard} was running on Dask workers that died more times than the "
                "scheduler allows (distributed.scheduler.allowed-failures): the shard itself "
                "likely kills its worker (memory, a crash in the teacher or decoder). Shards "
                "already written are kept; check the worker logs, then rerun to resume"
            )
        if isinstance(exc, CancelledError):
            return ShardTaskError(
                f"shard {shard} was cancelled on the Dask cluster ({exc}); the shards written "
                "so far are kept: rerun the same command to resume"
            )
        if isinstance(exc, ImportError):
            return WorkerEnvironmentError(
                f"a Dask worker cannot import what shard {shard} needs ({exc}). Fix: "
                f"{_dask_worker.INSTALL_FIX}"
            )
        return exc

    def _lost_message(self, joined: bool) -> str:
        what = (f"all {self.most_workers} Dask workers were lost" if joined and self.most_workers
                else "no Dask worker joined")  # fmt: skip
        return (
            f"{what} ({self.address}): no usable worker for {self.lost_workers_timeout:g} s "
            f"(lost_workers_timeout). The shards written so far are kept: start workers "
            f"(`dask worker {self.address} --nthreads 1 --resources GPU=1`) and rerun the same "
            "command to resume; see the worker logs for why they stopped"
        )


def _accepts_connections(address: str) -> bool:
    """Whether `address` accepts a TCP connection within 5 s (a plain socket: no client)."""
    try:
        host, port = get_address_host_port(address)
        socket.create_connection((host, port), timeout=5).close()
    except (OSError, ValueError):
        return False
    return True
