"""Operations on a real Prefect server: events, a served deployment trigger, the `gpu` limit, timeouts.

A real `prefect server start` on a loopback port; `pld serve` (with a sweep triggered by
`pld.cache.finalized`) and every `pld` command run as subprocesses against it, as a user
would; the REST API (events, flow and task runs, concurrency limits, logs) and headless
Chromium look at the outcome.

Set PLD_SCREENSHOT_DIR to also keep the UI screenshot (docs/img/ui-trigger.png, shown on the docs' Operations page).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from browser_testlib import chromium
from prefect_server import api, prefect_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CUDA = torch.cuda.is_available()
TEACHER = {
    "name": "pld_pipeline.demo.small_models:seeded_tiny_cnn",
    "num_classes": 10,
    "input_size": 24,
}


def cache_config(root: Path, output: str, **overrides) -> dict:
    data = {
        "dataset_root": str(root), "teacher": TEACHER,
        # 3 folders under an untrained 10-class teacher, on purpose (issue 14's guards).
        "classes": "sorted-folders", "min_label_agreement": 0.0,
        "views": {"mode": "replay", "num_views": 2, "seed": 3}, "format": "topk", "k": 4,
        "temperatures": [1.0, 2.0], "shard_size": 4, "output": output, "batch_size": 4,
        "num_workers": 0, "device": "cpu", "replay_check_samples": 4,
    }  # fmt: skip
    return data | overrides


def train_config(root: Path, cache: str, run_dir: str, **overrides) -> dict:
    data = {
        "cache": cache, "dataset_root": str(root), "val_root": str(root),
        "student": {"name": "pld_pipeline.demo.small_models:tiny_cnn", "image_size": 24},
        "loss": {"name": "pld"}, "optim": {"name": "sgd", "lr": 0.05}, "epochs": 2,
        "batch_size": 4, "run_dir": run_dir, "device": "cpu", "num_workers": 0,
    }  # fmt: skip
    return data | overrides


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect-ops-home")) as running:
        yield running


@pytest.fixture(scope="module")
def env(server) -> dict:
    """Environment of every `pld` subprocess: this server, the worktree's code, test models."""
    path = os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PREFECT_API_URL=server["url"], PYTHONPATH=path,
                PREFECT_RUNNER_POLL_FREQUENCY="2")  # fmt: skip


def pld(env: dict, *args: str, extra_env: dict | None = None, timeout: int = 600):
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args], env={**env, **(extra_env or {})},
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: int = 600) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for(what: str, probe, timeout: float = 240, every: float = 2):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def events(server: dict, name: str) -> list[dict]:
    page = api(server["url"], "/events/filter",
               {"filter": {"event": {"name": [name]}}, "limit": 50})  # fmt: skip
    return page["events"]


def flow_runs(server: dict, flow: str) -> list[dict]:
    return api(server["url"], "/flow_runs/filter",
               {"flows": {"name": {"any_": [flow]}}, "limit": 50})  # fmt: skip


def task_runs_of(server: dict, flow_run_id: str) -> list[dict]:
    return api(server["url"], "/task_runs/filter",
               {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 50})  # fmt: skip


def logs_of(server: dict, flow_run_id: str) -> str:
    rows = api(server["url"], "/logs/filter",
               {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})  # fmt: skip
    return "\n".join(row["message"] for row in rows)


def when(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ops")


@pytest.fixture(scope="module")
def served(server, env, workdir, tiny_imagefolder):
    """`pld serve` with a sweep deployment triggered by caches finalized under workdir/weekly*."""
    base = train_config(tiny_imagefolder, "replaced-by-the-trigger", "unused", epochs=1)
    schedules = workdir / "schedules.yaml"
    schedules.write_text(yaml.safe_dump({
        "sweep": {
            "parameters": {"config": {"base": base, "grid": {"loss.name": ["ce", "pld"]},
                                      "sweep_dir": str(workdir / "sweeps")}},
            "trigger": {"cache": str(workdir / "weekly") + "*"},
        },
    }))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--schedules", str(schedules),
         "--gpu-slots", "1"],
        env=env, cwd=REPO, stdout=open(workdir / "serve.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the server's log for its lifetime
        start_new_session=True,
    )  # fmt: skip

    def ready():
        if proc.poll() is not None:
            pytest.fail("pld serve exited:\n" + (workdir / "serve.log").read_text()[-3000:])
        automations = api(server["url"], "/automations/filter", {})
        deployments = api(server["url"], "/deployments/filter", {})
        return automations and len(deployments) == 4 and automations

    automations = wait_for("pld serve to register its deployments and trigger", ready, 180)
    yield {"automations": automations, "log": workdir / "serve.log"}
    os.killpg(proc.pid, 15)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def weekly_cache(served, env, workdir, tiny_imagefolder) -> dict:
    """`pld cache` into workdir/weekly-{date} (the date placeholder a weekly schedule uses)."""
    config = workdir / "cache.yaml"
    config.write_text(
        yaml.safe_dump(cache_config(tiny_imagefolder, str(workdir / "weekly-{date}")))
    )
    dates = {dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")}
    code, out = finish(pld(env, "cache", "--config", str(config)))
    dates.add(dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"))
    assert code == 0, out[-4000:]
    made = sorted(workdir.glob("weekly-*"))
    assert len(made) == 1, made
    assert made[0].name in {f"weekly-{d}" for d in dates}, made
    return {"path": made[0], "config": cache_config(tiny_imagefolder, str(made[0]))}


def test_finalized_cache_event_is_read_back_through_the_events_api(server, weekly_cache):
    import zarr

    path = weekly_cache["path"]
    found = wait_for("pld.cache.finalized", lambda: [
        e for e in events(server, "pld.cache.finalized") if e["resource"]["prefect.resource.id"] == str(path)
    ], 60)  # fmt: skip
    assert len(found) == 1
    event = found[0]
    assert event["resource"]["prefect.resource.name"] == path.name
    payload = event["payload"]
    # Independent references: the manifest as plain zarr stores it, and the config.
    manifest = dict(zarr.open_group(str(path), mode="r").attrs["pld_cache"])
    manifest.pop("label_check", None)  # a finding about the cache, not part of its identity
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()
    assert payload["manifest_hash"] == digest
    assert payload["teacher"] == TEACHER["name"] == manifest["teacher"]["name"]
    assert (payload["format"], payload["k"], payload["num_views"]) == ("topk", 4, 2)
    assert payload["temperatures"] == [1.0, 2.0] == manifest["temperatures"]
    assert payload["num_samples"] == 12
    # The replay check's max error is the one the cache-stats artifact shows.
    stats = api(server["url"], "/artifacts/filter",
                {"artifacts": {"key": {"any_": ["cache-stats"]}}, "limit": 5})  # fmt: skip
    mine = [a for a in stats if str(path) in (a["description"] or "")]
    table = json.loads(mine[0]["data"]) if isinstance(mine[0]["data"], str) else mine[0]["data"]
    assert payload["replay_max_error"] == pytest.approx(table[-1]["replay_max_abs_error"], abs=1e-4)
    # ... and the one the same check (same seed, same records) finds when run again here.
    from pld_pipeline.configs.cache import CacheConfig
    from pld_pipeline.teacher import replay_check

    again = replay_check.replay_check(CacheConfig.model_validate(weekly_cache["config"]))
    assert payload["replay_max_error"] == pytest.approx(again.max_abs_error, abs=1e-7)
    assert 0 <= payload["replay_max_error"] <= 0.05
    # Prefect relates the event to the flow run that sent it.
    run = [r for r in flow_runs(server, "cache-teacher") if r["state_type"] == "COMPLETED"][0]
    related = {r["prefect.resource.id"] for r in event["related"]}
    assert f"prefect.flow-run.{run['id']}" in related


def test_served_trigger_runs_the_sweep_on_the_new_cache(server, served, weekly_cache, workdir):
    path = weekly_cache["path"]
    assert [a["name"] for a in served["automations"]] == ["sweep-on-new-cache"]

    def finished():
        runs = [r for r in flow_runs(server, "sweep") if r["deployment_id"]]
        return [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]

    runs = wait_for("the triggered sweep to finish", finished, 300)
    assert len(runs) == 1, runs
    run = runs[0]
    assert run["state_type"] == "COMPLETED", (run["state"], served["log"].read_text()[-3000:])
    config = run["parameters"]["config"]
    assert config["base"]["cache"] == str(path)
    assert config["sweep_dir"] == str(workdir / "sweeps" / path.name)
    rows = json.loads((workdir / "sweeps" / path.name / "results.json").read_text())
    assert sorted(r["loss"] for r in rows) == ["ce", "pld"]
    # The sweep and each of its runs announced themselves.
    sweep_events = wait_for("pld.sweep.finished", lambda: events(server, "pld.sweep.finished"), 60)
    assert sweep_events[0]["resource"]["prefect.resource.id"] == config["sweep_dir"]
    assert sweep_events[0]["payload"]["cache"] == str(path)
    assert sweep_events[0]["payload"]["runs"] == 2
    best = max(rows, key=lambda r: r["best_top1"])
    assert sweep_events[0]["payload"]["best"]["best_top1"] == pytest.approx(best["best_top1"])
    run_events = events(server, "pld.run.finished")
    by_dir = {e["resource"]["prefect.resource.id"]: e["payload"] for e in run_events}
    for row in rows:
        payload = by_dir[str(workdir / "sweeps" / path.name / row["run"])]
        assert payload["best_top1"] == pytest.approx(row["best_top1"])
        assert payload["cache"] == str(path)


def test_gpu_runs_take_turns_on_a_one_slot_limit_and_cpu_runs_take_none(
    server, served, weekly_cache, env, workdir, tiny_imagefolder
):
    limit = api(server["url"], "/v2/concurrency_limits/gpu")
    assert limit["limit"] == 1  # created by `pld serve --gpu-slots 1`
    cache = str(weekly_cache["path"])
    procs = {}
    for name in ("gpu-a", "gpu-b", "cpu-c"):
        gpu = name.startswith("gpu")
        # On a machine with CUDA the GPU runs really use it; elsewhere the test switch makes
        # two CPU runs ask for the limit as CUDA runs would.
        device = "cuda" if gpu and CUDA else "cpu"
        switch = {"PLD_TAKE_GPU_LIMIT_ON_CPU": "1"} if gpu and not CUDA else {}
        config = workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump(
            train_config(tiny_imagefolder, cache, str(workdir / name), device=device)
        ))  # fmt: skip
        procs[name] = pld(env, "train", "--config", str(config), extra_env=switch)
    for name, proc in procs.items():
        code, out = finish(proc)
        assert code == 0, (name, out[-3000:])
    runs = {r["parameters"]["config"]["run_dir"].rsplit("/", 1)[-1]: r
            for r in flow_runs(server, "train-student")}  # fmt: skip
    spans = {}
    for name, run in runs.items():
        (task,) = [t for t in task_runs_of(server, run["id"]) if t["name"] == name]
        spans[name] = (when(task["start_time"]), when(task["end_time"]))
    first, second = sorted([spans["gpu-a"], spans["gpu-b"]])
    assert first[1] <= second[0], f"the two GPU runs overlapped: {spans}"
    # The CPU run took no slot (while the GPU runs say they held one).
    assert "holds 1 slot(s) of the 'gpu' limit" in logs_of(server, runs["gpu-a"]["id"])
    assert "holds 1 slot(s) of the 'gpu' limit" in logs_of(server, runs["gpu-b"]["id"])
    assert "slot" not in logs_of(server, runs["cpu-c"]["id"])
    assert api(server["url"], "/v2/concurrency_limits/gpu")["active_slots"] == 0


def test_timed_out_shard_fails_with_the_documented_message_and_resumes(
    server, served, env, workdir, tiny_imagefolder
):
    out_path = workdir / "slow-cache"
    slow = dict(TEACHER, name="slow_models:slow_tiny_cnn")  # 0.25 s per forward
    config = workdir / "slow.yaml"
    config.write_text(yaml.safe_dump(cache_config(
        tiny_imagefolder, str(out_path), teacher=slow, shard_size=12, batch_size=1,
        shard_timeout_s=1.5, replay_check_samples=0,
    )))  # fmt: skip
    code, out = finish(pld(env, "cache", "--config", str(config)))
    assert code == 2, out[-3000:]
    expected = (
        f"Shard 0 (views [0, 1]) of the teacher pass into {out_path} timed out after "
        "shard_timeout_s=1.5 s. Resuming is safe"
    )
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"pld cache: error: {expected}"), last
    (run,) = [r for r in flow_runs(server, "cache-teacher") if r["state_type"] == "FAILED"]
    (shards_run,) = [r for r in flow_runs(server, "cache-shards")
                     if r["parameters"]["config"]["output"] == str(out_path)]  # fmt: skip
    (shard,) = task_runs_of(server, shards_run["id"])
    assert shard["name"] == "shard-0-views-[0, 1]"
    assert shard["state"]["name"] == "TimedOut"
    assert expected in shard["state"]["message"]
    assert shard["run_count"] == 1  # a timeout is not retried
    failed = wait_for("pld.cache.failed", lambda: events(server, "pld.cache.failed"), 60)
    assert failed[0]["resource"]["prefect.resource.id"] == str(out_path)
    assert expected in failed[0]["payload"]["reason"]
    assert failed[0]["payload"]["error"] == "ShardTimeoutError"
    # "Resuming is safe": the same command without the limit finishes the same cache.
    code, out = finish(pld(env, "cache", "--config", str(config), "shard_timeout_s=null"))
    assert code == 0, out[-3000:]
    import storage

    assert storage.open_cache(str(out_path)).missing() == []


def test_ui_shows_the_trigger_automation(server, served, tmp_path):
    (automation,) = served["automations"]
    shot = tmp_path / "automation.png"
    dom = chromium(
        f"{server['ui']}/automations/automation/{automation['id']}", tmp_path / "chrome", shot
    )
    assert "sweep-on-new-cache" in dom, dom[-2000:]
    assert "pld.cache.finalized" in dom
    assert shot.is_file()
    assert shot.stat().st_size > 10_000
    if os.environ.get("PLD_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["PLD_SCREENSHOT_DIR"]) / "ui-trigger.png")
