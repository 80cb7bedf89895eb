"""DDP: 2 CPU processes on gloo under torchrun train like one process on the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from train_testlib import train_config

from pld_pipeline.errors import ConfigError
from pld_pipeline.student.run.ddp import DistContext, init_from_env
from pld_pipeline.student.run.train import fit


def test_single_process_context_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_from_env()
    assert ctx == DistContext()
    assert ctx.is_main
    assert not ctx.enabled
    assert ctx.sum([1, 2.5], torch.device("cpu")) == [1.0, 2.5]


def test_global_batch_must_split_evenly(replay_cache, color_folder, tmp_path):
    with pytest.raises(ConfigError, match="multiple of 2"):
        fit(
            train_config(replay_cache, color_folder, tmp_path / "r", batch_size=7),
            dist_context=DistContext(rank=0, world_size=2),
        )


@pytest.mark.integration
@pytest.mark.parametrize("m", [1, 2], ids=["1-view", "2-views-per-image"])
def test_two_gloo_ranks_match_one_process(
    m, replay_cache, color_folder, color_val_folder, tmp_path
):
    # 24 images, global batch 8: 3 steps per epoch (6 with 2 views per image: 4 images per
    # step, 2 per rank, each with both its views); each rank takes 4 of every batch. The
    # loss (PLD) is a batch mean and the student has no batch norm, so averaged rank
    # gradients equal the one-process gradient and the weights must agree after every step.
    # With 2 views the ranks split whole images: rank r decodes images r, r + 2, ... of the
    # permutation, which together are the one-process batch.
    settings = dict(
        val_root=str(color_val_folder),
        epochs=2,
        batch_size=8,
        views_per_image=m,
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.9, "clip_grad_norm": 5.0},
    )
    single = fit(train_config(replay_cache, color_folder, tmp_path / "one", **settings))

    cfg = train_config(replay_cache, color_folder, tmp_path / "two", **settings)
    cfg_path = tmp_path / "ddp.json"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "pld_pipeline.student.torchrun_entry",
            "--config",
            str(cfg_path),
            "--backend",
            "gloo",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["world_size"] == 2

    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)
    for one, two in zip(single.history, result["history"], strict=True):
        assert two["samples"] == one["samples"] == 24 * m
        assert two["steps"] == 3 * m == one["steps"]
        assert two["views"] == one["views"]
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert two["val_samples"] == one["val_samples"] == 9
        assert (two["val_top1"], two["val_top5"]) == (one["val_top1"], one["val_top5"])
        # The calibration bins are summed over ranks: the same NLL, ECE and confidence.
        for key in ("val_nll", "val_ece", "val_confidence"):
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-9), key


def test_a_cuda_device_without_an_index_gets_the_current_one(monkeypatch):
    # torch.cuda.set_device refuses a bare "cuda" (torch 2.11, seen on an H200): one
    # process asks for "cuda" and must get, and set, an indexed device.
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    assert DistContext().device("cuda") == torch.device("cuda", 3)
    assert DistContext(rank=1, world_size=2, local_rank=1).device("auto") == torch.device("cuda", 1)
    assert calls == [torch.device("cuda", 3), torch.device("cuda", 1)]
