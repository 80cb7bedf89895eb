"""ClusterWatch on in-process Dask clusters: the bound on a cluster with no usable worker,
the import probe, and what a lost worker reports. (Real processes: test_installed_dask.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import distributed
import pytest

from flows import worker_probe
from flows.dask_watch import ClusterWatch
from pld_pipeline.errors import SchedulerUnreachableError, WorkerEnvironmentError, WorkersLostError

pytestmark = pytest.mark.integration  # Dask schedulers on loopback, a subprocess probe


@pytest.fixture
def empty_cluster():
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        yield cluster


def test_no_worker_fails_after_the_bound_not_before(empty_cluster):
    with ClusterWatch(empty_cluster.scheduler_address, lost_workers_timeout=1.5) as watch:
        started = time.monotonic()
        assert watch.check() == 0  # within the bound: keep waiting
        # Polls as the flow does until the bound has passed.
        with pytest.raises(WorkersLostError, match="no Dask worker joined.*rerun the same command"):  # noqa: PT012
            while True:
                watch.check()
                time.sleep(0.2)
        assert time.monotonic() - started >= 1.5


def test_workers_without_the_gpu_resource_do_not_count():
    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        ClusterWatch(cluster.scheduler_address, 0.5, gpus_per_task=1) as watch,
    ):
        time.sleep(0.6)
        with pytest.raises(WorkersLostError, match="1 free 'GPU' resource"):  # noqa: PT012
            watch.check()  # the worker without a GPU resource does not count
            time.sleep(0.6)
            watch.check()


def test_lost_worker_is_reported_then_the_bound_applies():
    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        ClusterWatch(cluster.scheduler_address, lost_workers_timeout=1.0) as watch,
    ):
        assert watch.check() == 1
        lost = []
        cluster.scale(0)
        deadline = time.monotonic() + 30
        while not lost and time.monotonic() < deadline:
            watch.check(on_lost=lambda address, name, keys: lost.append((address, keys)))
            time.sleep(0.2)
        assert len(lost) == 1
        time.sleep(1.1)
        with pytest.raises(WorkersLostError, match="all 1 Dask workers were lost"):
            watch.check()


def test_unreachable_scheduler_is_one_error():
    with pytest.raises(SchedulerUnreachableError, match="cannot reach the Dask scheduler"):
        ClusterWatch("tcp://127.0.0.1:9", lost_workers_timeout=1).connect()


def test_probe_reports_a_shadowing_package(tmp_path):
    """In a fresh interpreter whose path starts with another `storage` package."""
    shadow = tmp_path / "storage"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    code = (f"import json, sys; sys.path.insert(0, {str(tmp_path)!r}); "
            "from flows import worker_probe; print(json.dumps(worker_probe.probe_project_imports()))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    found = json.loads(out.stdout)
    assert "another package of that name" in found["storage"]["error"]
    assert found["pld_pipeline"]["error"] is None
    assert found["flows"]["error"] is None
    assert worker_probe.probe_project_imports()["storage"]["error"] is None  # this process


def test_a_worker_that_imports_the_project_passes_the_probe():
    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        ClusterWatch(cluster.scheduler_address, lost_workers_timeout=5) as watch,
    ):
        assert watch.check() == 1


def test_a_shadowed_worker_is_refused(monkeypatch):
    """The probe's answer for a worker that resolves `storage` elsewhere becomes the error."""

    def fake_probe():
        return {"storage": {"file": None, "error": "'storage' resolves to a namespace folder (/w/storage), not this project"},
                "pld_pipeline": {"file": "x", "error": None}, "flows": {"file": "y", "error": None},
                "python": {"file": "/usr/bin/python3", "error": None}}  # fmt: skip

    monkeypatch.setattr(worker_probe, "probe_project_imports", fake_probe)
    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        ClusterWatch(cluster.scheduler_address, lost_workers_timeout=5) as watch,
        pytest.raises(
            WorkerEnvironmentError,
            match=r"cannot import this project: 'storage' resolves to a namespace folder \(/w/storage\).*install pld-pipeline",
        ),
    ):
        watch.check()


def test_a_paused_worker_is_not_lost_but_not_usable():
    """Dask pauses a worker under memory pressure; it keeps its tasks, so its shards must not
    be reported as lost, but it takes no new task, so it does not hold off the bound."""
    from distributed.core import Status

    with (
        # No memory limit: the memory monitor would resume the worker at once.
        distributed.LocalCluster(
            n_workers=1, processes=False, dashboard_address=None, memory_limit=0
        ) as cluster,
        ClusterWatch(cluster.scheduler_address, lost_workers_timeout=1.0) as watch,
    ):
        assert watch.check() == 1
        worker = next(iter(cluster.workers.values()))
        # Set on the worker's loop, which tells the scheduler, as a memory-paused worker does.
        cluster.loop.add_callback(setattr, worker, "status", Status.paused)
        lost = []
        deadline = time.monotonic() + 30
        while watch.check(on_lost=lambda *args: lost.append(args)) and time.monotonic() < deadline:
            time.sleep(0.1)  # until the scheduler has heard
        assert watch.check(on_lost=lambda *args: lost.append(args)) == 0
        time.sleep(1.1)
        with pytest.raises(WorkersLostError, match="no usable worker"):
            watch.check(on_lost=lambda *args: lost.append(args))
        assert lost == []
        cluster.loop.add_callback(setattr, worker, "status", Status.running)

        def usable() -> int:
            try:
                return watch.check(on_lost=lambda *args: lost.append(args))
            except WorkersLostError:  # past the bound until the scheduler hears the resume
                return 0

        deadline = time.monotonic() + 30
        while usable() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert usable() == 1
        assert lost == []


def test_fetching_a_finished_shard_whose_worker_died_does_not_wait_forever():
    """The worker holding a finished shard's result dies before the result is fetched:
    Dask reruns the task and the fetch would wait for a worker forever. The fetch is
    polled with the health check, which fails once no worker is left for the bound."""
    import threading
    import uuid

    from prefect_dask.task_runners import PrefectDaskFuture

    from flows.shard_waiting import shard_result

    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
        ClusterWatch(cluster.scheduler_address, lost_workers_timeout=1.0) as watch,
    ):
        assert watch.check() == 1
        done = client.submit(dict, shard=0, records=4, pure=False)
        distributed.wait(done, timeout=30)
        cluster.scale(0)  # the only worker, and the result it holds, are gone
        deadline = time.monotonic() + 30
        while client.scheduler_info()["workers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        future = PrefectDaskFuture(task_run_id=uuid.uuid4(), wrapped_future=done)
        outcome: list = []

        def fetch() -> None:
            try:
                outcome.append(shard_result(future, 0, watch, watch.check, poll_seconds=0.2))
            except BaseException as exc:  # noqa: BLE001 - handed to the assertion
                outcome.append(exc)

        thread = threading.Thread(target=fetch, daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the fetch is still waiting for a worker"
        assert isinstance(outcome[0], WorkersLostError), outcome
