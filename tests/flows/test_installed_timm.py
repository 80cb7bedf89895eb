"""timm models through the installed CLI, offline: `pld cache` with a `timm:` teacher whose
weights are in a local Hugging Face cache, `pld train` with `timm:` students from that
cache and from a checkpoint, and the two errors a user meets first (no timm extra, weights
not fetched), each one `pld <cmd>: error:` line.

Every run is `.venv/bin/pld` in a subprocess from a folder outside the repository, with
HF_HOME at the test's cache, HF_HUB_OFFLINE=1 and HF_ENDPOINT at a loopback port where
nothing listens, so a download attempt could not succeed. Results are read with plain
zarr and compared with the weights files read by hand."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import zarr
from cluster_testlib import free_port, run_pld, start_prefect_server, user_env, write_yaml
from imagenet_subset import imagenet_class_list
from test_cli_errors import assert_one_error_line, file_hashes
from timm_testlib import CONV, VIT, hand_logits, hand_model, hand_pixels

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def work(tmp_path_factory, timm_hub, wnid_photos) -> dict:
    """A user's folder: the class list, the environment (offline, HF_HOME at the hub cache)
    and a Prefect server the runs share."""
    root = tmp_path_factory.mktemp("installed-timm")
    classes = root / "imagenet1k_wnids.txt"
    classes.write_text("\n".join(imagenet_class_list()) + "\n")
    (root / "empty-torch-home").mkdir()
    env = user_env(
        root, HF_HOME=str(timm_hub.home), HF_HUB_OFFLINE="1",
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", TORCH_HOME=str(root / "empty-torch-home"),
    )  # fmt: skip
    server, url = start_prefect_server(root, env)
    try:
        yield {"root": root, "classes": classes, "env": dict(env, PREFECT_API_URL=url)}
    finally:
        server.kill_group(signal.SIGTERM)


def cache_yaml(where: Path, data: Path, classes: Path, output: Path, **teacher) -> Path:
    config = {
        "dataset_root": str(data), "classes": str(classes),
        "teacher": {"name": "timm:test_vit", **teacher}, "views": {"mode": "eval"},
        "k": 5, "shard_size": 3, "output": str(output), "batch_size": 3, "num_workers": 0,
        "device": "cpu", "amp": "off", "replay_check_samples": 2, "min_label_agreement": 0.0,
    }  # fmt: skip
    return write_yaml(where / "cache.yaml", config)


@pytest.fixture(scope="module")
def timm_cache(work, wnid_photos) -> Path:
    out = work["root"] / "vit.zarr"
    config = cache_yaml(work["root"], wnid_photos, work["classes"], out)
    result = run_pld(["cache", "--config", str(config)], work["root"], work["env"])
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_pld_cache_with_a_timm_teacher_from_the_hub_cache(timm_cache, timm_hub, wnid_photos):
    import timm.data

    group = zarr.open_group(str(timm_cache), mode="r")
    teacher = group.attrs["pld_cache"]["teacher"]
    file = timm_hub.files[VIT]
    assert teacher["name"] == f"timm:{VIT}"
    assert teacher["weights_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert teacher["weights_source"].startswith(f"hf-cache:timm/{VIT}@")
    model = hand_model(VIT, file)
    cfg = timm.data.resolve_data_config(model=model)
    assert (teacher["input_size"], teacher["interpolation"]) == (160, cfg["interpolation"])
    keys = [str(k) for k in group["key"][...]]
    labels = group["label"][...]
    pixels = [
        hand_pixels(wnid_photos / key, group["crop"][0, i], False, 160, cfg["interpolation"])
        for i, key in enumerate(keys)
    ]
    ref = hand_logits(model, pixels, cfg["mean"], cfg["std"]).numpy()
    gt = ref[np.arange(len(keys)), labels]
    assert np.abs(group["gt_logit"][0] - gt).max() <= np.abs(gt).max() * 2.0**-10 + 1e-3
    assert group["topk_idx"][0, :, 0].tolist() == ref.argmax(1).tolist()


@pytest.mark.parametrize("source", ["hub-cache", "checkpoint"])
def test_pld_train_with_a_timm_student(source, work, timm_cache, timm_hub, wnid_photos, tmp_path):
    import torch

    if source == "hub-cache":
        student = {"name": "timm:test_vit", "pretrained": True, "kwargs": {"drop_path_rate": 0.05}}
        expected = hand_model(VIT, timm_hub.files[VIT])
    else:
        student = {"name": f"timm:{CONV}", "checkpoint": str(timm_hub.checkpoint)}
        expected = hand_model(CONV, timm_hub.checkpoint)
    config = {
        "cache": str(timm_cache), "dataset_root": str(wnid_photos),
        "classes": str(work["classes"]), "val_root": str(wnid_photos),
        "student": {**student, "image_size": 160, "mean": [0.5] * 3, "std": [0.5] * 3,
                    "eval_crop_pct": "model", "interpolation": "model"},
        "loss": {"name": "pld"}, "optim": {"name": "sgd", "lr": 1e-3}, "epochs": 1,
        "batch_size": 2, "device": "cpu", "num_workers": 0, "run_dir": str(tmp_path / "run"),
    }  # fmt: skip
    result = run_pld(
        ["train", "--config", str(write_yaml(tmp_path / "train.yaml", config))],
        tmp_path, work["env"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["student"] == student["name"]
    assert np.isfinite(summary["final_nll"])
    # It started from the file: three small SGD steps move the parameters by little (a
    # random init would be far off). BatchNorm statistics move on their own, so only the
    # parameters are compared.
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert sorted(trained) == sorted(expected.state_dict())
    start = dict(expected.named_parameters())
    drift = max((trained[k].double() - start[k]).abs().max().item() for k in start)
    assert 0 < drift < 0.05


def test_without_the_extra_pld_is_one_error_line(work, timm_cache, wnid_photos, tmp_path):
    """A PYTHONPATH entry holding a `timm` module that fails to import, as `import timm`
    does where the extra is not installed."""
    hidden = tmp_path / "no-timm"
    hidden.mkdir()
    (hidden / "timm.py").write_text(
        "raise ImportError('No module named timm (hidden by the test)')\n"
    )
    config = cache_yaml(tmp_path, wnid_photos, work["classes"], tmp_path / "new.zarr")
    before = file_hashes(tmp_path)
    env = dict(work["env"], PYTHONPATH=str(hidden), PYTHONDONTWRITEBYTECODE="1")
    result = run_pld(["cache", "--config", str(config)], tmp_path, env, timeout=300)
    assert_one_error_line(
        result.returncode, result.stderr, "cache", 'pip install "pld-pipeline[timm]"'
    )
    assert file_hashes(tmp_path) == before
    train = {
        "cache": str(timm_cache), "dataset_root": str(wnid_photos),
        "classes": str(work["classes"]), "run_dir": str(tmp_path / "run"),
        "student": {"name": "timm:test_resnet"}, "device": "cpu", "num_workers": 0,
        "batch_size": 2,
    }  # fmt: skip
    result = run_pld(
        ["train", "--config", str(write_yaml(tmp_path / "train.yaml", train))], tmp_path, env
    )
    assert_one_error_line(
        result.returncode, result.stderr, "train", 'pip install "pld-pipeline[timm]"'
    )
    assert file_hashes(tmp_path) == before | {str(tmp_path / "train.yaml"): hashlib.sha256(
        (tmp_path / "train.yaml").read_bytes()).hexdigest()}  # fmt: skip


def test_weights_not_fetched_is_one_error_line(work, timm_cache, wnid_photos, tmp_path):
    empty = tmp_path / "empty-hf-home"
    empty.mkdir()
    config = cache_yaml(tmp_path, wnid_photos, work["classes"], tmp_path / "new.zarr")
    before = file_hashes(tmp_path)
    env = dict(work["env"], HF_HOME=str(empty))
    result = run_pld(["cache", "--config", str(config)], tmp_path, env, timeout=300)
    assert_one_error_line(result.returncode, result.stderr, "cache", f"`hf download timm/{VIT}`")
    line = result.stderr.strip().splitlines()[-1]
    assert str(empty / "hub" / f"models--timm--{VIT}") in line
    assert file_hashes(tmp_path) == before
    # A student asking for hub weights hears the same before its run starts.
    train = {
        "cache": str(timm_cache), "dataset_root": str(wnid_photos),
        "classes": str(work["classes"]), "run_dir": str(tmp_path / "run"),
        "student": {"name": "timm:test_resnet", "pretrained": True}, "device": "cpu",
        "num_workers": 0, "batch_size": 2,
    }  # fmt: skip
    result = run_pld(
        ["train", "--config", str(write_yaml(tmp_path / "train.yaml", train))], tmp_path, env
    )
    assert_one_error_line(result.returncode, result.stderr, "train", f"`hf download timm/{CONV}`")
