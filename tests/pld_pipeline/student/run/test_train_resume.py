"""Resume: 1 epoch + resume equals an uninterrupted run, bit for bit on CPU; worker count does not matter."""

from __future__ import annotations

import json

import pytest
import torch
from train_testlib import train_config

from pld_pipeline.errors import CheckpointError
from pld_pipeline.student.run.train import fit

TIMING = {"epoch_time_s", "data_time_s", "target_time_s", "target_share", "images_per_s"}


class CrashError(Exception):
    pass


def crash_after(epoch: int):
    def callback(record):
        if record["epoch"] == epoch:
            raise CrashError(f"simulated crash after epoch {epoch}")

    return callback


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def config(cache, root, val, run_dir, **kw):
    # Dropout makes training draw from the global torch RNG, so RNG restore is tested too.
    settings = {
        "val_root": str(val),
        "epochs": 3,
        "student": {"name": "pld_test_models:dropout_cnn", "image_size": 16},
        "optim": {"name": "sgd", "lr": 0.05, "warmup_epochs": 1, "weight_decay": 1e-4},
    }
    return train_config(cache, root, run_dir, **{**settings, **kw})


def weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_resume_equals_uninterrupted(replay_cache, color_folder, color_val_folder, tmp_path):
    full = fit(config(replay_cache, color_folder, color_val_folder, tmp_path / "full"))

    cut = config(replay_cache, color_folder, color_val_folder, tmp_path / "cut")
    with pytest.raises(CrashError):
        fit(cut, progress_callback=crash_after(0))
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = fit(cut.model_copy(update={"resume": True}))

    assert without_timing(resumed.history) == without_timing(full.history)
    assert (resumed.final_top1, resumed.best_top1, resumed.best_epoch) == (
        full.final_top1,
        full.best_top1,
        full.best_epoch,
    )
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]

    again = fit(cut.model_copy(update={"resume": True}))  # finished: nothing left to train
    assert without_timing(again.history) == without_timing(full.history)


def test_resume_refuses_a_changed_config(replay_cache, color_folder, color_val_folder, tmp_path):
    cfg = config(replay_cache, color_folder, color_val_folder, tmp_path / "r")
    with pytest.raises(CrashError):
        fit(cfg, progress_callback=crash_after(0))
    changed = cfg.model_copy(update={"resume": True, "seed": 1})
    with pytest.raises(CheckpointError, match="seed: 0 -> 1"):
        fit(changed)


def test_worker_count_does_not_change_training(
    replay_cache, color_folder, color_val_folder, tmp_path
):
    runs = [
        fit(
            config(
                replay_cache,
                color_folder,
                color_val_folder,
                tmp_path / f"w{n}",
                num_workers=n,
                epochs=2,
            )
        )
        for n in (0, 2)
    ]
    assert without_timing(runs[0].history) == without_timing(runs[1].history)


def test_a_run_written_before_newer_config_fields_still_resumes(
    replay_cache, color_folder, color_val_folder, tmp_path
):
    cfg = config(replay_cache, color_folder, color_val_folder, tmp_path / "old", epochs=2)
    with pytest.raises(CrashError):
        fit(cfg, progress_callback=crash_after(0))
    stored = json.loads((tmp_path / "old" / "config.json").read_text())
    for newer in ("views_per_image", "views_layout", "decode", "checkpoint_every"):
        del stored[newer]  # as written before these fields existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(stored))
    resumed = fit(cfg.model_copy(update={"resume": True}))
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    changed = cfg.model_copy(update={"resume": True, "views_per_image": 2})
    with pytest.raises(CheckpointError, match="views_per_image: 1 -> 2"):
        fit(changed)  # a real change is still refused
