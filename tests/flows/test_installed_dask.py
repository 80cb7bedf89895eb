"""The teacher pass on Dask as installed: `.venv/bin/pld` from a folder outside the repo,
against real Dask schedulers and workers (and a real Prefect server), as docs/scaling-out.md says.

These are the tests that would have caught the hang: pytest's own sys.path is not
inherited by anything here.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cluster_testlib import (
    Cluster,
    arrays_of,
    assert_same_arrays,
    cache_config,
    done_count,
    run_pld,
    start_pld,
    start_prefect_server,
    user_env,
    wait_until,
    write_user_teacher,
    write_yaml,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SLOW_TEACHER = "user_teacher:slow_tiny_cnn"


def api(url: str, path: str, body: dict | None = None) -> object:
    request = urllib.request.Request(
        url + path, data=json.dumps(body or {}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("installed-dask")


@pytest.fixture(scope="module")
def prefect_server(work: Path):
    proc, url = start_prefect_server(work, user_env(work))
    yield url
    proc.kill_group()


def test_local_dask_cluster_from_the_cli_equals_threads(
    work, tiny_imagefolder, installed_reference
):
    out = work / "local-dask.zarr"
    config = write_yaml(work / "local.yaml", cache_config(tiny_imagefolder, str(out)))
    result = run_pld(
        ["cache", "--config", str(config), "--dask-workers", "2"], work, user_env(work)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_arrays(arrays_of(str(out)), installed_reference)


def test_readme_multi_machine_recipe(work, tiny_imagefolder, installed_reference, prefect_server):
    """Scheduler + two `dask worker --resources GPU=1` from their own folders, PREFECT_API_URL
    set, then `pld cache --dask-address ... gpus_per_task=1`."""
    env = user_env(work, PREFECT_API_URL=prefect_server)
    cluster = Cluster(work / "recipe", env)
    try:
        cluster.start("gpu0", "gpu1")
        out = work / "recipe.zarr"
        config = write_yaml(work / "recipe.yaml", cache_config(tiny_imagefolder, str(out)))
        result = run_pld(
            ["cache", "--config", str(config), "--dask-address", cluster.address,
             "gpus_per_task=1"], work, env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
    finally:
        cluster.stop()
    assert_same_arrays(arrays_of(str(out)), installed_reference)
    runs = api(prefect_server, "/task_runs/filter", {"task_runs": {"name": {"like_": "shard-"}}})
    shards = {r["name"] for r in runs if r["state_type"] == "COMPLETED"}
    assert len(shards) == 6, sorted(r["name"] for r in runs)


def test_a_killed_worker_s_shard_is_retried_elsewhere(
    work, tiny_imagefolder, installed_reference, prefect_server
):
    """SIGKILL one worker's process group mid-pass: the pass finishes, identical cache, and the
    retry shows in the flow run's logs (what the UI shows)."""
    teacher_dir = write_user_teacher(work / "user-code")
    env = user_env(work, PREFECT_API_URL=prefect_server, PYTHONPATH=str(teacher_dir),
                   USER_TEACHER_SECONDS="1.5")  # fmt: skip
    cluster = Cluster(work / "kill-one", env)
    out = work / "kill-one.zarr"
    data = cache_config(tiny_imagefolder, str(out), **{"teacher.name": SLOW_TEACHER})
    config = write_yaml(work / "kill-one.yaml", data)
    try:
        doomed, _ = cluster.start("doomed", "survivor")
        pld = start_pld(["cache", "--config", str(config), "--dask-address", cluster.address,
                         "gpus_per_task=1"], work / "kill-one-cli", env)  # fmt: skip
        wait_until(lambda: done_count(str(out)) >= 1, 300, "a first shard", pld)
        time.sleep(1.0)  # both workers are mid-shard now
        doomed.kill_group()
        pld.popen.wait(timeout=400)
        assert pld.popen.returncode == 0, pld.output()[-4000:]
    finally:
        cluster.stop()
    assert_same_arrays(arrays_of(str(out)), installed_reference)
    # The newest warnings: earlier tests on this server logged their own.
    logs = api(prefect_server, "/logs/filter",
               {"logs": {"level": {"ge_": 30}}, "sort": "TIMESTAMP_DESC", "limit": 200})  # fmt: skip
    messages = [entry["message"] for entry in logs]
    retried = [m for m in messages if "doomed" in m and "was lost with this shard assigned" in m]
    assert retried, messages
    assert all("retrying on another worker" in m for m in retried), messages
    # The retry is in the flow run's logs, which the UI shows. The AwaitingRetry state the
    # flow also sets on the shard's task run is best effort: under load the server dropped
    # it once (busy SQLite), so it is not asserted here.


def test_losing_every_worker_fails_within_the_bound_then_resumes(
    work, tiny_imagefolder, installed_reference
):
    teacher_dir = write_user_teacher(work / "user-code")
    env = user_env(work, PYTHONPATH=str(teacher_dir), USER_TEACHER_SECONDS="1.5")
    cluster = Cluster(work / "kill-all", env)
    out = work / "kill-all.zarr"
    bound = 15
    data = cache_config(tiny_imagefolder, str(out), **{"teacher.name": SLOW_TEACHER,
                                                      "lost_workers_timeout": bound})  # fmt: skip
    config = write_yaml(work / "kill-all.yaml", data)
    args = ["cache", "--config", str(config), "--dask-address", cluster.address]
    try:
        workers = cluster.start("a", "b")
        pld = start_pld(args, work / "kill-all-cli", env)
        wait_until(lambda: done_count(str(out)) >= 1, 300, "a first shard", pld)
        for worker in workers:
            worker.kill_group()
        killed = time.monotonic()
        written = done_count(str(out))
        # A hang fails here. Dask's no-workers-timeout (the pass sets lost_workers_timeout on
        # the scheduler) fails the shards waiting for a worker, including one whose result
        # was being fetched from a worker that died (tests/flows/test_dask_cluster.py).
        # Prefect's own final state writes still wait for their server; on a timeout, the
        # log's timestamps show where it was.
        try:
            pld.popen.wait(timeout=bound + 60)
        except subprocess.TimeoutExpired:
            pld.kill_group()  # its log's timestamps show which step it was waiting in
            raise AssertionError(f"pld still running {bound + 60} s after the kill:\n"
                                 f"{pld.output()[-6000:]}") from None  # fmt: skip
        waited = time.monotonic() - killed
        output = pld.output()
        assert pld.popen.returncode == 2, output[-4000:]
        errors = [line for line in output.splitlines() if line.startswith("pld cache: error:")]
        assert len(errors) == 1, output[-4000:]
        assert "all 2 Dask workers were lost" in errors[0]
        assert "rerun the same command" in errors[0]
        assert bound <= waited < bound + 60
        assert written < 12, "the pass finished before the kill; nothing was tested"
        assert done_count(str(out)) >= written  # done bits already written stay
        cluster.start_worker("c")
        cluster.start_worker("d")
        cluster.wait_for_workers(2)
        result = run_pld(args, work / "kill-all-cli", env)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "to compute" in result.stderr + result.stdout
    finally:
        cluster.stop()
    assert_same_arrays(arrays_of(str(out)), installed_reference)


def test_a_worker_that_cannot_import_the_project_fails_loudly(work, tiny_imagefolder):
    """A worker whose `storage` is another package (here a regular package earlier on its
    path) is refused at the first check, with the reason and the fix, instead of dying on
    every task while the pass waits."""
    shadow = work / "shadow" / "storage"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('"""Some other project\'s storage package."""\n')
    env = user_env(work)
    cluster = Cluster(work / "shadowed", dict(env, PYTHONPATH=str(shadow.parent)))
    out = work / "shadowed.zarr"
    config = write_yaml(work / "shadowed.yaml", cache_config(tiny_imagefolder, str(out)))
    try:
        cluster.start("shadowed")
        started = time.monotonic()
        result = run_pld(["cache", "--config", str(config), "--dask-address", cluster.address],
                         work, env, timeout=300)  # fmt: skip
    finally:
        cluster.stop()
    assert result.returncode == 2, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("pld cache: error:")]
    assert len(errors) == 1, result.stderr[-4000:]
    assert "cannot import this project" in errors[0]
    assert str(shadow) in errors[0]
    assert "install pld-pipeline" in errors[0]
    assert time.monotonic() - started < 200
    assert done_count(str(out)) == 0


def test_prefect_server_restart_mid_pass(work, tiny_imagefolder, installed_reference):
    """The Prefect server goes down mid-pass and comes back on the same port and database:
    the shard tasks on Dask never needed it, the pass finishes with an identical cache, and
    its flow run ends Completed in the restarted server (docs/scaling-out.md, "When the Prefect server restarts mid-pass")."""
    import re

    root = work / "restart"
    server, url = start_prefect_server(root, user_env(work))
    port = int(re.search(r":(\d+)/api", url).group(1))
    teacher_dir = write_user_teacher(work / "user-code")
    env = user_env(work, PREFECT_API_URL=url, PYTHONPATH=str(teacher_dir),
                   USER_TEACHER_SECONDS="1.5")  # fmt: skip
    cluster = Cluster(root, env)
    out = work / "restart.zarr"
    data = cache_config(tiny_imagefolder, str(out), **{"teacher.name": SLOW_TEACHER})
    config = write_yaml(root / "restart.yaml", data)
    try:
        cluster.start("a", "b")
        pld = start_pld(["cache", "--config", str(config), "--dask-address", cluster.address],
                        root / "cli", env)  # fmt: skip
        wait_until(lambda: done_count(str(out)) >= 1, 300, "a first shard", pld)
        server.kill_group()
        time.sleep(3)
        server, url = start_prefect_server(root, user_env(work), port=port)
        pld.popen.wait(timeout=600)
        assert pld.popen.returncode == 0, pld.output()[-4000:]
    finally:
        cluster.stop()
        server.kill_group()
    assert_same_arrays(arrays_of(str(out)), installed_reference)


def test_losing_the_scheduler_mid_pass_is_one_error_then_resumes(
    work, tiny_imagefolder, installed_reference
):
    """The scheduler process dies mid-pass (its machine went down): the pass fails at once
    with one line that says the shards written are kept, and the same command resumes on
    a new scheduler and workers to an identical cache."""
    teacher_dir = write_user_teacher(work / "user-code")
    env = user_env(work, PYTHONPATH=str(teacher_dir), USER_TEACHER_SECONDS="1.5")
    cluster = Cluster(work / "lost-scheduler", env)
    out = work / "lost-scheduler.zarr"
    data = cache_config(tiny_imagefolder, str(out), **{"teacher.name": SLOW_TEACHER})
    config = write_yaml(work / "lost-scheduler.yaml", data)
    args = ["cache", "--config", str(config), "--dask-address", cluster.address]
    try:
        cluster.start("a", "b")
        pld = start_pld(args, work / "lost-scheduler-cli", env)
        wait_until(lambda: done_count(str(out)) >= 1, 300, "a first shard", pld)
        cluster.scheduler.kill_group()
        written = done_count(str(out))
        try:
            pld.popen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pld.kill_group()
            raise AssertionError(f"pld still running 120 s after the scheduler died:\n"
                                 f"{pld.output()[-6000:]}") from None  # fmt: skip
        output = pld.output()
        assert pld.popen.returncode == 2, output[-4000:]
        errors = [line for line in output.splitlines() if line.startswith("pld cache: error:")]
        assert len(errors) == 1, output[-4000:]
        assert "lost the Dask scheduler" in errors[0]
        assert "rerun the same command" in errors[0]
        assert written < 12, "the pass finished before the kill; nothing was tested"
        assert done_count(str(out)) >= written  # done bits already written stay
        for worker in cluster.workers:
            worker.kill_group()
        cluster.workers.clear()
        cluster.start("c", "d")  # a new scheduler on the same port, new workers
        result = run_pld(args, work / "lost-scheduler-cli", env)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "to compute" in result.stderr + result.stdout
    finally:
        cluster.stop()
    assert_same_arrays(arrays_of(str(out)), installed_reference)


def test_an_unreachable_scheduler_is_one_error(work, tiny_imagefolder):
    from cluster_testlib import free_port

    out = work / "nowhere.zarr"
    data = cache_config(tiny_imagefolder, str(out), lost_workers_timeout=5)
    config = write_yaml(work / "nowhere.yaml", data)
    result = run_pld(["cache", "--config", str(config), "--dask-address",
                      f"tcp://127.0.0.1:{free_port()}"], work, user_env(work), timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("pld cache: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "cannot reach the Dask scheduler" in errors[0], result.stderr[-3000:]
