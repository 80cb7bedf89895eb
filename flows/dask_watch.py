"""Watching the Dask cluster of a teacher pass: workers that import this project, and no
waiting forever.

Dask itself reschedules a task whose worker died, but when every worker is gone, or none
can even unpickle a shard task, it waits for new workers indefinitely. A `ClusterWatch`
bounds that wait (`lost_workers_timeout`), probes each worker's imports before it gets
a shard, and reports which shards a lost worker was running so the retry is visible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import cloudpickle
import distributed

from flows import worker_probe
from pld_pipeline.errors import (
    SchedulerUnreachableError,
    WorkerEnvironmentError,
    WorkersLostError,
)

logger = logging.getLogger(__name__)

# The probe travels by value: a worker that cannot import `flows` must still run it.
cloudpickle.register_pickle_by_value(worker_probe)

INSTALL_FIX = (
    "install pld-pipeline into the Python that runs `dask worker` on that machine "
    '(`pip install "pld-pipeline[s3]"` or `make install` from a checkout) and restart the '
    "worker; see docs/troubleshooting.md"
)


@contextmanager
def local_cluster(workers: int, gpus_per_worker: int = 0) -> Iterator[str]:
    """A LocalCluster of single-threaded worker processes; yields its scheduler address.

    With GPUs, one worker owns one GPU (see `cache_build.worker_device`), so each worker
    advertises `gpus_per_worker` 'GPU' resources for shard tasks that ask for them.
    """
    kwargs: dict = {"n_workers": max(1, workers), "threads_per_worker": 1, "processes": True,
                    "dashboard_address": None}  # fmt: skip
    if gpus_per_worker:
        kwargs["resources"] = {"GPU": gpus_per_worker}
    cluster = distributed.LocalCluster(**kwargs)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@dataclass
class ClusterWatch:
    """A monitoring client of the pass's scheduler (separate from Prefect's task client).

    Args:
        address: the scheduler, tcp://host:port.
        lost_workers_timeout: seconds the pass may go on with no usable worker (or no
            scheduler) before it fails; also how long it waits for the first worker.
        gpus_per_task: a worker is usable only if it advertises this many 'GPU' resources.
    """

    address: str
    lost_workers_timeout: float
    gpus_per_task: int = 0
    client: distributed.Client | None = None
    _probed: set[str] = field(default_factory=set)
    _usable_since: float = field(default_factory=time.monotonic)
    _workers: dict[str, str] = field(default_factory=dict)  # address -> name
    _running: dict[str, list[str]] = field(default_factory=dict)  # address -> task keys
    _max_workers: int = 0
    last_error: str | None = None  # the latest shard failure, for the lost-workers message

    def connect(self) -> ClusterWatch:
        """Connect (bounded by the timeout); raise SchedulerUnreachableError if it fails."""
        try:
            self.client = distributed.Client(
                self.address, timeout=max(5.0, self.lost_workers_timeout), set_as_default=False
            )
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnreachableError(
                f"cannot reach the Dask scheduler at {self.address} ({exc}); start it "
                "(`dask scheduler`) or fix --dask-address"
            ) from exc
        return self

    def close(self) -> None:
        if self.client is not None:
            self.client.close(timeout=10)

    def __enter__(self) -> ClusterWatch:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def workers(self) -> dict[str, dict]:
        """Workers in the cluster that could take a shard task, whatever their status
        (a paused worker keeps its tasks): {address: scheduler info}."""
        assert self.client is not None
        if self.client.status != "running":
            raise ConnectionError(f"client status {self.client.status}")
        info = self.client.scheduler_info(n_workers=-1)
        return {
            address: worker
            for address, worker in info.get("workers", {}).items()
            if worker.get("resources", {}).get("GPU", 0) >= self.gpus_per_task
        }

    def check_imports(self, workers: list[str]) -> None:
        """Probe the imports of workers not probed yet.

        Raises:
            WorkerEnvironmentError: a worker resolves this project's packages elsewhere.
        """
        assert self.client is not None
        new = [w for w in workers if w not in self._probed]
        if not new:
            return
        answers = self.client.run(
            worker_probe.probe_project_imports, workers=new, on_error="return"
        )
        for worker, answer in answers.items():
            if isinstance(answer, BaseException):
                problem = f"the probe itself failed: {type(answer).__name__}: {answer}"
            else:
                problems = [v["error"] for k, v in answer.items() if v.get("error")]
                if not problems:
                    self._probed.add(worker)
                    continue
                problem = "; ".join(problems) + f" (worker Python: {answer['python']['file']})"
            raise WorkerEnvironmentError(
                f"Dask worker {worker} cannot import this project: {problem}. Fix: {INSTALL_FIX}"
            )

    def check(self, on_lost: Callable[[str, str, list[str]], None] | None = None) -> int:
        """One health check: probe new workers, report lost ones, enforce the bound.

        Args:
            on_lost: called with (worker address, worker name, task keys it was running)
                for each worker that disappeared since the last check.

        Returns:
            The number of usable workers now.

        Raises:
            WorkersLostError: no usable worker for longer than `lost_workers_timeout`.
            SchedulerUnreachableError: the scheduler has been unreachable that long.
            WorkerEnvironmentError: see `check_imports`.
        """
        now = time.monotonic()
        try:
            present = self.workers()
            running = {w: list(keys) for w, keys in self.client.processing().items()}
        except (OSError, ConnectionError, TimeoutError) as exc:
            if now - self._usable_since > self.lost_workers_timeout:
                raise SchedulerUnreachableError(
                    f"lost the Dask scheduler at {self.address} for over "
                    f"{self.lost_workers_timeout:.0f} s ({exc}); the shards written so far "
                    "are kept: restart the scheduler and workers, then rerun the same "
                    "command to resume"
                ) from exc
            return 0
        # Lost: gone from the scheduler. A paused or closing worker is still there and keeps
        # its tasks (Dask moves them only when it leaves), so it is not reported, but it is
        # not usable either: it takes no new task.
        for address in set(self._workers) - set(present):
            name = self._workers.pop(address)
            keys = self._running.get(address, [])
            logger.warning("Dask worker %s (%s) left the cluster", name, address)
            if on_lost is not None:
                on_lost(address, name, keys)
        workers = {a: w for a, w in present.items() if w.get("status", "running") == "running"}
        self.check_imports(list(workers))
        self._workers.update({a: str(w.get("name", a)) for a, w in present.items()})
        self._running = running
        if workers:
            self._usable_since = now
            self._max_workers = max(self._max_workers, len(workers))
            return len(workers)
        waited = now - self._usable_since
        if waited > self.lost_workers_timeout:
            what = (f"all {self._max_workers} Dask workers were lost" if self._max_workers
                    else "no Dask worker joined")  # fmt: skip
            if self.last_error:
                what += f"; last error: {self.last_error}"
            need = (
                f" with {self.gpus_per_task} free 'GPU' resource(s)" if self.gpus_per_task else ""
            )
            raise WorkersLostError(
                f"{what} ({self.address}): no usable worker{need} for {waited:.0f} s "
                f"(lost_workers_timeout={self.lost_workers_timeout:g}). The shards written so "
                "far are kept: start workers (`dask worker ADDRESS --nthreads 1 --resources "
                "GPU=1`) and rerun the same command to resume; see the worker logs for why "
                "they stopped"
            )
        return 0
