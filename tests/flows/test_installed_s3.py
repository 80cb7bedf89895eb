"""Caches on S3 through the installed CLI: a real S3 server (moto) on loopback, fake keys.

Endpoint and credentials reach `pld` the way a user sets them: the standard AWS
variables, or `storage_options` in the config. Arrays are compared, read with plain
zarr, to the same pass written to local disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cluster_testlib import (
    arrays_of,
    assert_same_arrays,
    cache_config,
    done_count,
    run_pld,
    start_pld,
    start_s3_server,
    user_env,
    wait_until,
    write_user_teacher,
    write_yaml,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def s3():
    server, s3 = start_s3_server()
    yield s3
    server.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("installed-s3")


@pytest.fixture(scope="module")
def s3_cache(work, tiny_imagefolder, s3, installed_reference) -> str:
    """`pld cache` to s3:// with the thread runner, endpoint and keys from AWS_* variables."""
    url = s3.url("threads")
    config = write_yaml(work / "threads.yaml", cache_config(tiny_imagefolder, url))
    result = run_pld(["cache", "--config", str(config)], work, user_env(work, **s3.env))
    assert result.returncode == 0, result.stderr[-4000:]
    return url


def test_thread_runner_to_s3_equals_local_disk(s3_cache, s3, installed_reference):
    assert_same_arrays(arrays_of(s3_cache, s3.storage_options), installed_reference)


def test_local_dask_cluster_to_s3_with_storage_options(
    work, tiny_imagefolder, s3, installed_reference
):
    """No AWS variables at all: endpoint and keys come from `storage_options` in the config,
    and reach the Dask workers with the config."""
    url = s3.url("dask")
    data = cache_config(tiny_imagefolder, url, storage_options=s3.storage_options)
    config = write_yaml(work / "dask.yaml", data)
    result = run_pld(
        ["cache", "--config", str(config), "--dask-workers", "2"], work, user_env(work)
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_arrays(arrays_of(url, s3.storage_options), installed_reference)


def test_sigkill_mid_pass_then_resume_on_s3(work, tiny_imagefolder, s3, installed_reference):
    teacher_dir = write_user_teacher(work / "user-code")
    env = user_env(work, PYTHONPATH=str(teacher_dir), USER_TEACHER_SECONDS="1.0", **s3.env)
    url = s3.url("killed")
    data = cache_config(tiny_imagefolder, url, **{"teacher.name": "user_teacher:slow_tiny_cnn"})
    config = write_yaml(work / "killed.yaml", data)
    pld = start_pld(["cache", "--config", str(config)], work / "killed-cli", env)
    wait_until(lambda: done_count(url, s3.storage_options) >= 2, 300, "two done bits", pld)
    pld.kill_group()
    written = done_count(url, s3.storage_options)
    assert written < 12, "the pass finished before the kill; nothing was tested"
    result = run_pld(["cache", "--config", str(config)], work / "killed-cli", env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_arrays(arrays_of(url, s3.storage_options), installed_reference)


def test_inspect_and_train_from_s3(work, tiny_imagefolder, s3, s3_cache):
    env = user_env(work, **s3.env)
    shown = run_pld(["inspect", s3_cache], work, env)
    assert shown.returncode == 0, shown.stderr[-4000:]
    assert s3_cache in shown.stdout
    assert "12" in shown.stdout
    run_dir = work / "student"
    train = {
        "cache": s3_cache, "dataset_root": str(tiny_imagefolder), "val_root": str(tiny_imagefolder),
        "student": {"name": "pld_pipeline.demo.small_models:tiny_cnn", "image_size": 24},
        "loss": {"name": "pld"}, "optim": {"name": "sgd", "lr": 0.05}, "epochs": 2,
        "batch_size": 4, "run_dir": str(run_dir), "device": "cpu", "num_workers": 0,
    }  # fmt: skip
    result = run_pld(["train", "--config", str(write_yaml(work / "train.yaml", train))], work, env)
    assert result.returncode == 0, result.stderr[-4000:]
    outcome = json.loads((run_dir / "result.json").read_text())
    assert outcome["cache"] == s3_cache
    assert outcome["epochs"] == 2
    assert len(outcome["history"]) == 2
    assert outcome["distinct_views"] == 2


def test_deleted_chunk_object_is_named(work, tiny_imagefolder, s3):
    url = s3.url("damaged")
    config = write_yaml(work / "damaged.yaml", cache_config(tiny_imagefolder, url,
                                                          replay_check_samples=0))  # fmt: skip
    env = user_env(work, **s3.env)
    assert run_pld(["cache", "--config", str(config)], work, env).returncode == 0
    s3.filesystem().rm(f"{s3.bucket}/damaged/topk_logp/c/1/2/0")
    result = run_pld(["inspect", url], work, env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("pld inspect: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "topk_logp/c/1/2/0" in lines[0]
    assert "view 1 shard 2" in lines[0]


def test_unreachable_endpoint_is_one_clear_error(work, s3):
    from cluster_testlib import free_port

    env = user_env(work, **dict(s3.env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"))
    result = run_pld(["inspect", s3.url("threads")], work, env, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("pld inspect: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "cannot reach" in lines[0]
    assert "AWS_ENDPOINT_URL" in lines[0]
