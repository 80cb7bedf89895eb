"""The guard after a pass, on a teacher that is right on its own classes (`color_teacher`):
a shuffled class list finishes the cache but flags it; students refuse it unless told."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from train_testlib import train_config

import storage
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.errors import ClassListError, LabelOrderError
from pld_pipeline.student.run.train import fit
from pld_pipeline.teacher import cache_build, cache_report

IN_ORDER = ["blue", "green", "red"]  # the teacher's classes, in its index order
SHUFFLED = ["green", "red", "blue"]


def cache_config(root: Path, output: Path, classes, **overrides) -> CacheConfig:
    data = {
        "dataset_root": str(root),
        "classes": classes,
        "teacher": {"name": "pld_test_models:color_teacher", "input_size": 16,
                    "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "views": {"mode": "replay", "num_views": 2, "seed": 1, "scale": [0.3, 1.0]},
        "k": 2, "shard_size": 8, "output": str(output), "batch_size": 8, "num_workers": 0,
        "device": "cpu", "replay_check_samples": 0,
    }  # fmt: skip
    return CacheConfig.model_validate(data | overrides)


def run_pass(config: CacheConfig) -> dict:
    """The cache-teacher flow's steps, without Prefect: plan, every shard, finalize."""
    plan = cache_build.prepare_cache(config)
    for shard, views in plan.shard_tasks():
        cache_build.build_shard(config, shard, views)
    return cache_report.finalize_cache(config).as_dict()


def agreement_by_hand(path: Path) -> float:
    """Teacher top-1 == label over every record, from the arrays with plain zarr."""
    group = zarr.open_group(str(path), mode="r")
    top = np.asarray(group["topk_idx"][:, :, 0])
    return float((top == np.asarray(group["label"][...])[None, :]).mean())


@pytest.fixture(scope="module")
def shuffled_cache(color_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shuffled") / "cache"
    report = run_pass(cache_config(color_folder, out, SHUFFLED))
    assert report["label_check"]["flagged"]
    return out


def test_the_right_class_list_passes(color_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    report = run_pass(cache_config(color_folder, out, IN_ORDER))
    check = report["label_check"]
    assert check["top1"] == pytest.approx(agreement_by_hand(out), abs=1e-12)
    assert check["top1"] > 0.9
    assert not check["flagged"]
    assert check["min_agreement"] == pytest.approx(2 / 3)  # C = 3: halfway from chance to 1
    assert check["records"] == 2 * 24
    cache_report.require_label_agreement(report)  # no error
    manifest = zarr.open_group(str(out), mode="r").attrs["pld_cache"]
    assert manifest["class_list"] == {
        "sha256": hashlib.sha256(b"blue\ngreen\nred\n").hexdigest(),
        "num_classes": 3,
        "source": "list",
    }
    assert manifest["label_check"]["flagged"] is False


def test_a_shuffled_class_list_is_flagged_and_fails_the_pass(
    shuffled_cache: Path, color_folder: Path
) -> None:
    group = zarr.open_group(str(shuffled_cache), mode="r")
    # Labels are positions in the shuffled list: blue -> 2, green -> 0, red -> 1.
    keys = [str(k) for k in group["key"][...]]
    wanted = [{"blue": 2, "green": 0, "red": 1}[k.split("/")[0]] for k in keys]
    assert group["label"][...].tolist() == wanted
    # The cache is finished: every record kept, complete, and flagged in the manifest.
    reader = storage.open_cache(str(shuffled_cache))
    reader.validate()
    check = group.attrs["pld_cache"]["label_check"]
    assert check["flagged"] is True
    assert check["top1"] == pytest.approx(agreement_by_hand(shuffled_cache), abs=1e-12)
    assert check["top1"] < 0.1
    report = cache_report.finalize_cache(cache_config(color_folder, shuffled_cache, SHUFFLED))
    with pytest.raises(LabelOrderError, match="probably do not follow the teacher's class order"):
        cache_report.require_label_agreement(report.as_dict())
    # What a user sees: inspect and the stats table lead with the flag.
    assert "labels     FLAGGED: LABEL MISMATCH" in storage.inspect(str(shuffled_cache))
    assert storage.summarize(str(shuffled_cache)).label_mismatch
    row = cache_report.stats_rows({**report.as_dict(), "replay_check": None})[-1]
    assert row["label_check"].startswith("FLAGGED: LABEL MISMATCH")
    assert cache_report.stats_description(report.as_dict()).startswith("LABEL MISMATCH")


def test_a_rerun_with_a_lower_threshold_accepts_the_cache(
    shuffled_cache: Path, color_folder: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(shuffled_cache, copy)
    config = cache_config(color_folder, copy, SHUFFLED, min_label_agreement=0.0)
    plan = cache_build.prepare_cache(config)  # the threshold is not part of the identity
    assert plan.todo == []
    report = cache_report.finalize_cache(config).as_dict()
    assert not report["label_check"]["flagged"]
    assert report["label_check"]["min_agreement"] == 0
    assert not storage.open_cache(str(copy)).manifest.label_mismatch


def test_students_refuse_a_flagged_cache_unless_allowed(
    shuffled_cache: Path, color_folder: Path, tmp_path: Path
) -> None:
    run = tmp_path / "refused"
    with pytest.raises(
        LabelOrderError, match="Refusing to train from a flagged cache.*allow_label"
    ):
        fit(train_config(shuffled_cache, color_folder, run, classes=SHUFFLED, epochs=1))
    assert not (run / "checkpoint.pt").exists()
    # Allowed, with the cache's own class list: it trains.
    result = fit(train_config(shuffled_cache, color_folder, tmp_path / "allowed",
                              classes=SHUFFLED, allow_label_mismatch=True, epochs=1))  # fmt: skip
    assert result.epochs == 1
    # Allowed, but the run's dataset maps the folders differently (sorted): named and refused.
    with pytest.raises(ClassListError, match="is label 0 here and 2 in the cache"):
        fit(train_config(shuffled_cache, color_folder, tmp_path / "sorted",
                         allow_label_mismatch=True, epochs=1))  # fmt: skip


def test_the_guard_before_the_pass_computes_nothing(color_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    config = cache_config(color_folder, out, None,
                          teacher={"name": "pld_pipeline.demo.small_models:seeded_tiny_cnn",
                                   "num_classes": 10, "input_size": 16})  # fmt: skip
    with pytest.raises(ClassListError, match="3 class folders but the teacher outputs 10"):
        cache_build.prepare_cache(config)
    assert not out.exists()
