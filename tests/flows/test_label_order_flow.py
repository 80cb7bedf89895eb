"""The issue as a new user met it: the 1000-class EfficientNet-Lite0 cached over a 3-class
folder of real photos. Without a class list the flow stops before computing; with the
sorted-folder opt-in it finishes the cache, flags it, shows the flag in the stats table and
`pld inspect`, and fails; a student run refuses the flagged cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import storage
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.errors import ClassListError, LabelOrderError

pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[2]


def config_for(root: Path, output: Path, **overrides) -> CacheConfig:
    return CacheConfig.model_validate({
        "dataset_root": str(root), "teacher": {"name": "pld_pipeline.teacher.zoo:efficientnet_lite0"},
        "views": {"mode": "eval"}, "k": 5, "output": str(output), "batch_size": 8,
        "num_workers": 0, "device": "cpu", "amp": "off", "replay_check_samples": 2,
        **overrides,
    })  # fmt: skip


@pytest.fixture(scope="module")
def flagged_cache(wnid_photos: Path, tmp_path_factory) -> Path:
    from flows.cache_teacher import cache_teacher

    out = tmp_path_factory.mktemp("flagged") / "cache"
    with pytest.raises(LabelOrderError, match="probably do not follow the teacher's class order"):
        cache_teacher(config_for(wnid_photos, out, classes="sorted-folders"))
    return out


def test_without_a_class_list_the_flow_stops_before_computing(wnid_photos: Path, tmp_path):
    from flows.cache_teacher import cache_teacher

    out = tmp_path / "cache"
    with pytest.raises(ClassListError, match="3 class folders but the teacher outputs 1000"):
        cache_teacher(config_for(wnid_photos, out))
    assert not out.exists()


def test_the_flagged_cache_is_finished_and_says_so(flagged_cache: Path):
    reader = storage.open_cache(str(flagged_cache))
    reader.validate()  # complete: nothing was lost
    assert reader.manifest.label_mismatch
    assert reader.manifest.label_check.top1 == 0.0  # labels 0, 1, 2: tench, goldfish, shark
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shown = subprocess.run(
        [sys.executable, "-m", "flows.cli", "inspect", str(flagged_cache)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "labels     FLAGGED: LABEL MISMATCH" in shown.stdout


def test_the_stats_table_shows_the_flag(flagged_cache: Path):
    from artifact_lookup import cache_stats_artifact

    description, rows = cache_stats_artifact(flagged_cache)
    assert description.startswith("LABEL MISMATCH")
    assert rows[-1]["label_check"].startswith("FLAGGED: LABEL MISMATCH")
    assert rows[-1]["replay_check"] == "passed"


def test_a_student_flow_refuses_the_flagged_cache(flagged_cache: Path, wnid_photos: Path, tmp_path):
    from flows.train_student import train_student
    from pld_pipeline.configs.train import TrainConfig

    config = TrainConfig.model_validate({
        "cache": str(flagged_cache), "dataset_root": str(wnid_photos),
        "student": {"name": "pld_pipeline.demo.small_models:tiny_cnn", "image_size": 24},
        "epochs": 1, "batch_size": 2, "run_dir": str(tmp_path / "run"), "device": "cpu",
        "num_workers": 0,
    })  # fmt: skip
    with pytest.raises(LabelOrderError, match="Refusing to train from a flagged cache"):
        train_student(config)
