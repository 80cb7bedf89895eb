"""PassCluster and the Dask settings a pass relies on, on in-process Dask clusters (and a
`dask scheduler` process where a test kills the scheduler).

The real processes (a CLI, a scheduler and workers killed mid-pass) are in
test_installed_dask.py; here each engine behaviour the pass leans on is shown alone, with
the setting on and, where it matters, off.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import distributed
import pytest
from distributed.scheduler import NoValidWorkerError, NoWorkerError

from pld_pipeline.errors import (
    SchedulerUnreachableError,
    ShardTaskError,
    WorkerEnvironmentError,
    WorkersLostError,
)
from pld_pipeline.teacher.dask_cluster import NO_WORKERS_TIMEOUT, PassCluster, connect

pytestmark = pytest.mark.integration  # Dask schedulers on loopback


def in_process_cluster(workers: int, processes: bool = False, **config) -> distributed.LocalCluster:
    with dask.config.set(config):
        return distributed.LocalCluster(
            n_workers=workers, processes=processes, dashboard_address=":0", threads_per_worker=1
        )


def nobody_listens() -> str:
    """A loopback address where no scheduler runs (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def listening():
    """A loopback address that accepts connections, as a live scheduler does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def test_a_scheduler_without_the_setting_gets_the_bound_for_the_pass_only():
    with in_process_cluster(1) as cluster:
        assert cluster.scheduler.no_workers_timeout is None
        with PassCluster(cluster.scheduler_address, lost_workers_timeout=7.0) as guard:
            assert cluster.scheduler.no_workers_timeout == 7.0
            assert guard.most_workers == 1
        assert cluster.scheduler.no_workers_timeout is None  # restored


def test_a_scheduler_s_own_setting_stands():
    with (
        in_process_cluster(1, **{NO_WORKERS_TIMEOUT: "40s"}) as cluster,
        PassCluster(cluster.scheduler_address, lost_workers_timeout=7.0) as guard,
    ):
        assert cluster.scheduler.no_workers_timeout == 40.0
        assert guard.lost_workers_timeout == 40.0  # what the error messages will say


def test_no_worker_joining_fails_after_the_bound():
    with in_process_cluster(0) as cluster:
        started = time.monotonic()
        with (
            pytest.raises(WorkersLostError, match="no Dask worker joined.*rerun the same command"),
            PassCluster(cluster.scheduler_address, lost_workers_timeout=1.5),
        ):
            pass
        assert time.monotonic() - started >= 1.5


def test_an_unreachable_scheduler_is_one_clear_error():
    with pytest.raises(SchedulerUnreachableError, match="cannot reach the Dask scheduler"):
        connect(nobody_listens(), timeout=2)


SHADOWING_PRELOAD = """
import sys

def dask_setup(worker):
    sys.path.insert(0, {folder!r})
    for name in [m for m in sys.modules if m == "storage" or m.startswith("storage.")]:
        del sys.modules[name]
"""


def test_a_worker_whose_imports_are_wrong_is_refused_with_the_fix(tmp_path):
    """A worker process whose `storage` is another package (a regular package earlier on its
    path, as a Dask spill folder or another project can be; put there by a worker preload)
    is refused at registration, with the reason and the fix."""
    shadow = tmp_path / "shadow" / "storage"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('"""Another project\'s storage package."""\n')
    preload = tmp_path / "shadowing_preload.py"
    preload.write_text(SHADOWING_PRELOAD.format(folder=str(shadow.parent)))
    with dask.config.set({"distributed.worker.preload": [str(preload)]}):
        cluster = distributed.LocalCluster(
            n_workers=1, processes=True, dashboard_address=":0", threads_per_worker=1
        )
    with (
        cluster,
        pytest.raises(WorkerEnvironmentError) as info,
        PassCluster(cluster.scheduler_address, lost_workers_timeout=5),
    ):
        pass
    assert "cannot import this project" in str(info.value)
    assert str(shadow) in str(info.value)
    assert "install pld-pipeline" in str(info.value)


def test_the_bound_ends_the_wait_for_a_result_whose_worker_died():
    """The hang the old poll loop was written for: a finished task's worker dies before its
    result is fetched, Dask reruns the task and the fetch waits for a worker. With
    no-workers-timeout it fails within the bound; without it, it is still waiting."""

    def fetch_after_the_worker_died(timeout: str | None) -> tuple[str, float]:
        outcome = []
        with in_process_cluster(1, **{NO_WORKERS_TIMEOUT: timeout}) as cluster:
            client = distributed.Client(cluster, set_as_default=False)
            future = client.submit(sum, [1, 2], pure=False)
            while future.status != "finished":
                time.sleep(0.05)
            cluster.scale(0)
            while client.scheduler_info()["workers"]:
                time.sleep(0.05)

            def fetch():
                started = time.monotonic()
                try:
                    outcome.append((repr(future.result()), time.monotonic() - started))
                except Exception as exc:  # noqa: BLE001 - what the fetch raises is the point
                    outcome.append((type(exc).__name__, time.monotonic() - started))

            thread = threading.Thread(target=fetch, daemon=True)
            thread.start()
            thread.join(timeout=15)
            answer = outcome[0] if outcome else ("still waiting", 15.0)
            client.close()
        return answer

    name, seconds = fetch_after_the_worker_died("2s")
    assert name == "NoWorkerError", (name, seconds)
    assert seconds < 14
    assert fetch_after_the_worker_died(None)[0] == "still waiting"


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_lost_worker_is_logged_with_the_unfinished_shards_it_was_running():
    guard = PassCluster("tcp://scheduler:8786", lost_workers_timeout=10)
    guard.present = {"tcp://a", "tcp://b"}
    for event in (
        {"shard": 3, "worker": "tcp://a", "name": "gpu0"},
        {"shard": 4, "worker": "tcp://a", "name": "gpu0"},
        {"shard": 5, "worker": "tcp://b", "name": "gpu1"},
        {"action": "remove-worker", "worker": "tcp://a", "processing-tasks": {}},
        {"action": "remove-worker", "worker": "tcp://c"},
    ):
        guard.events.put((0.0, event))
    logger = logging.getLogger("test-lost-worker")
    recorder = Recorder()
    logger.addHandler(recorder)
    guard.report_events(logger, unfinished={4, 5})
    assert recorder.lines == [
        "shard 4: Dask worker gpu0 (tcp://a) was lost with this shard assigned (running "
        "there); retrying on another worker (views already marked done are kept)",
        "Dask worker tcp://c (tcp://c) was lost while idle",
    ]
    assert guard.present == {"tcp://b"}


@pytest.mark.parametrize(
    ("error", "expected", "fragment"),
    [
        (NoWorkerError("k", 10.0), WorkersLostError, "all 2 Dask workers were lost"),
        (NoValidWorkerError("k", set(), set(), {"GPU": 1}, 10.0), WorkersLostError, "no usable worker"),
        (distributed.KilledWorker("k", "tcp://a", 3), ShardTaskError, "allowed-failures"),
        (distributed.client.FutureCancelledError("k", "scheduler-connection-lost"),
         SchedulerUnreachableError, "lost the Dask scheduler"),
        (distributed.comm.CommClosedError("in <TCP ConnectionPool.gather>: reset by peer"),
         SchedulerUnreachableError, "lost the Dask scheduler"),
        (ModuleNotFoundError("No module named 'flows'"), WorkerEnvironmentError, "install pld-pipeline"),
    ],
)  # fmt: skip
def test_dask_s_errors_become_the_pass_s(error, expected, fragment):
    guard = PassCluster(nobody_listens(), lost_workers_timeout=10, most_workers=2)
    translated = guard.shard_error(error, shard=3)
    assert isinstance(translated, expected)
    assert fragment in str(translated)
    assert "rerun" in str(translated) or "install" in str(translated)
    other = ValueError("a shard's own error")
    assert guard.shard_error(other, shard=3) is other


def test_connection_errors_are_the_shard_s_own_while_the_scheduler_answers(listening):
    guard = PassCluster(listening, lost_workers_timeout=10)
    own = OSError("No space left on device")
    assert guard.shard_error(own, shard=3) is own
    cancelled = guard.shard_error(distributed.client.FutureCancelledError("k", "cancel"), 3)
    assert isinstance(cancelled, ShardTaskError)
    assert "shard 3 was cancelled" in str(cancelled)


class StallingFuture:
    """A finished shard whose result fetch stalls (the client's gather waits on a dead
    connection) `stalls` times, then returns `value`; or raises `error` at once."""

    def __init__(self, stalls: int, value=None, error: BaseException | None = None):
        self.stalls, self.value, self.error, self.calls = stalls, value, error, 0

    def result(self, timeout: float):
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.calls <= self.stalls:
            time.sleep(timeout)
            raise TimeoutError("the fetch timed out")
        return self.value


def test_a_stalled_result_fetch_is_retried_while_the_scheduler_answers(monkeypatch, listening):
    monkeypatch.setattr("pld_pipeline.teacher.dask_cluster.RESULT_WAIT_S", 0.2)
    future = StallingFuture(stalls=2, value={"shard": 3})
    assert PassCluster(listening, lost_workers_timeout=10).outcome(future, 3) == {"shard": 3}
    assert future.calls == 3


def test_a_stalled_result_fetch_with_the_scheduler_gone_is_the_lost_scheduler_error(monkeypatch):
    monkeypatch.setattr("pld_pipeline.teacher.dask_cluster.RESULT_WAIT_S", 0.2)
    future = StallingFuture(stalls=100)
    with pytest.raises(SchedulerUnreachableError, match="rerun the same command"):
        PassCluster(nobody_listens(), lost_workers_timeout=10).outcome(future, 3)
    assert future.calls == 1


def test_a_shard_s_own_timeout_is_raised_as_it_is(monkeypatch, listening):
    """A shard that failed with a TimeoutError of its own fails at once, not as a stall."""
    monkeypatch.setattr("pld_pipeline.teacher.dask_cluster.RESULT_WAIT_S", 30.0)
    own = TimeoutError("shard 3 ran past shard_timeout_s")
    future = StallingFuture(stalls=0, error=own)
    with pytest.raises(TimeoutError) as raised:
        PassCluster(listening, lost_workers_timeout=10).outcome(future, 3)
    assert raised.value is own
    assert future.calls == 1


@pytest.fixture
def scheduler_process():
    """A `dask scheduler` and one `dask worker`, each its own process started from the
    installed entry points (as the README starts them), so the test can SIGKILL the
    scheduler; yields (address, the scheduler's Popen)."""
    address = nobody_listens()
    port = address.rsplit(":", 1)[1]
    bin_dir = Path(sys.executable).parent
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", port,
         "--dashboard-address", ":0"], **quiet,
    )  # fmt: skip
    worker = subprocess.Popen(
        [bin_dir / "dask", "worker", address, "--nthreads", "1", "--dashboard-address", ":0"],
        **quiet,
    )
    try:
        yield address, scheduler
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait(timeout=30)


@pytest.mark.timeout(120)
def test_a_killed_scheduler_is_seen_lost_and_the_pass_exits_cleanly(scheduler_process):
    address, scheduler = scheduler_process
    guard = PassCluster(address, lost_workers_timeout=20)
    guard.__enter__()
    assert guard.restore_timeout  # the exit will try to restore the scheduler's setting
    assert not guard.scheduler_lost()
    scheduler.kill()
    scheduler.wait(timeout=30)
    assert guard.scheduler_lost()
    guard.__exit__(None, None, None)  # nothing to restore on a dead scheduler: no error
    assert guard.client is None


@pytest.mark.timeout(120)
def test_a_scheduler_that_dies_during_the_exit_s_restore_is_not_an_error(scheduler_process):
    """The race the last CI run lost: the client still said "running" when the exit asked
    the scheduler to restore its setting, and the scheduler died before it answered
    (`CommClosedError` out of `run_on_scheduler`). Made certain here: the scheduler is
    stopped (SIGSTOP: its connections stay open) while the exit starts, then killed."""
    address, scheduler = scheduler_process
    guard = PassCluster(address, lost_workers_timeout=20)
    guard.__enter__()
    scheduler.send_signal(signal.SIGSTOP)
    raised: list[BaseException] = []

    def leave() -> None:
        try:
            guard.__exit__(None, None, None)
        except BaseException as exc:  # noqa: BLE001 - what the exit raises is the point
            raised.append(exc)

    exiting = threading.Thread(target=leave, daemon=True)
    exiting.start()
    time.sleep(1.0)  # the exit is waiting for the stopped scheduler's answer
    assert exiting.is_alive()
    scheduler.kill()
    exiting.join(timeout=90)
    assert not exiting.is_alive(), "the exit still waits on a dead scheduler"
    assert raised == []
    assert guard.client is None
