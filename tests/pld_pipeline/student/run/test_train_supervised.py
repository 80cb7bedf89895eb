"""`cache: null`: plain supervised training (how the demo trains its teacher)."""

from __future__ import annotations

import json

import pytest

from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.errors import ConfigError


def config(root, run_dir, **extra) -> dict:
    data = {
        "cache": None, "dataset_root": str(root), "val_root": str(root),
        "student": {"name": "pld_pipeline.demo.small_models:tiny_cnn", "image_size": 24,
                    "random_scale": [0.6, 1.0]},
        "loss": {"name": "ce"}, "optim": {"name": "sgd", "lr": 0.05},
        "epochs": 4, "batch_size": 4, "run_dir": str(run_dir), "device": "cpu", "num_workers": 0,
    }  # fmt: skip
    data.update(extra)
    return data


def test_supervised_run_trains_without_a_cache(tiny_imagefolder, tmp_path):
    from pld_pipeline.student.run.train import fit

    result = fit(TrainConfig.model_validate(config(tiny_imagefolder, tmp_path / "run")))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert result.cache_format == "none"
    assert not result.views_match
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert "val_top1" in json.loads(lines[-1])
    # 3 classes in the folder -> a 3-way head when num_classes is left unset.
    assert result.final["val_samples"] == 12


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"loss": {"name": "pld"}}, "loss must be 'ce'"),
    ({"loss": {"name": "kd"}}, "loss must be 'ce'"),
])  # fmt: skip
def test_distillation_losses_need_a_cache(tiny_imagefolder, tmp_path, extra, fragment):
    from pld_pipeline.configs.loading import validate_config

    with pytest.raises(ConfigError, match=fragment):
        validate_config(TrainConfig, config(tiny_imagefolder, tmp_path / "run", **extra))
