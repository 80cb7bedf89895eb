"""train-student and sweep flows on a tiny cache: no teacher, metrics, artifacts, skipping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def tiny_cache(tiny_imagefolder: Path, tmp_path_factory) -> Path:
    from flows.cache_teacher import cache_teacher
    from pld_pipeline.configs.cache import CacheConfig

    out = tmp_path_factory.mktemp("student-flows") / "cache"
    cache_teacher(CacheConfig.model_validate({
        "dataset_root": str(tiny_imagefolder), "classes": "sorted-folders",
        "min_label_agreement": 0.0,  # an untrained teacher
        "teacher": {"name": "slow_models:counted_tiny_cnn", "num_classes": 10, "input_size": 24},
        "views": {"mode": "replay", "num_views": 2, "seed": 0},
        "k": 4, "temperatures": [1.0, 4.0], "shard_size": 8, "output": str(out),
        "batch_size": 8, "num_workers": 0, "device": "cpu", "replay_check_samples": 0,
    }))  # fmt: skip
    return out


def train_config(cache: Path, root: Path, run_dir: Path, loss: str = "pld") -> dict:
    return {
        "cache": str(cache), "dataset_root": str(root), "val_root": str(root),
        "student": {"name": "pld_pipeline.demo.small_models:tiny_cnn", "image_size": 24},
        "loss": {"name": loss}, "optim": {"name": "sgd", "lr": 0.05},
        "epochs": 2, "batch_size": 4, "run_dir": str(run_dir), "device": "cpu",
        "num_workers": 0,
    }  # fmt: skip


def artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {a.key for a in client.read_latest_artifacts()}


def test_train_student_never_builds_the_teacher(tiny_cache, tiny_imagefolder, tmp_path):
    import slow_models

    from flows.train_student import train_student
    from pld_pipeline.configs.train import TrainConfig
    from pld_pipeline.teacher import cache_build

    cache_build._teacher.cache_clear()  # a fresh process would have no teacher either
    slow_models.BUILT.clear()
    run_dir = tmp_path / "run"
    result = train_student(
        TrainConfig.model_validate(train_config(tiny_cache, tiny_imagefolder, run_dir))
    )
    assert slow_models.BUILT == []
    assert result["distinct_views"] == 2
    assert result["mean_dropped_weight"] is not None
    lines = (run_dir / "metrics.jsonl").read_text().strip().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
    assert (run_dir / "result.json").is_file()
    assert "student-result-run" in artifact_keys()


def test_sweep_writes_table_and_plot_then_skips_finished_runs(
    tiny_cache, tiny_imagefolder, tmp_path
):
    from flows.sweep import sweep
    from pld_pipeline.configs.train import SweepConfig

    config = SweepConfig.model_validate({
        "base": train_config(tiny_cache, tiny_imagefolder, tmp_path / "unused"),
        "grid": {"loss.name": ["ce", "pld"], "seed": [0, 1]},
        "sweep_dir": str(tmp_path / "sweep"), "max_parallel": 2,
    })  # fmt: skip
    rows = sweep(config)
    assert sorted(r["loss"] for r in rows) == ["ce", "ce", "pld", "pld"]
    assert all(r["status"] == "trained" for r in rows)
    assert all(0.0 <= r["best_top1"] <= 100.0 and 0.0 <= r["final_ece"] <= 100.0 for r in rows)
    # Seeds aggregated: one group per loss, n = 2, the sample std of the two runs.
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [g["name"] for g in summary["groups"]] == ["loss.name=ce", "loss.name=pld"]
    for group in summary["groups"]:
        mine = [r for r in rows if r["loss.name"] == group["point"]["loss.name"]]
        assert group["seeds"] == [0, 1]
        assert group["runs"] == [r["run"] for r in mine]
        for metric in ("best_top1", "final_top1", "final_nll", "final_ece"):
            values = [r[metric] for r in mine]
            stats = group["stats"][metric]
            assert stats["n"] == 2
            assert stats["mean"] == pytest.approx(sum(values) / 2)
            assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
            assert (stats["min"], stats["max"]) == (min(values), max(values))
    assert "`loss.name=pld`" in (tmp_path / "sweep" / "summary.md").read_text()
    png = tmp_path / "sweep" / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"sweep-results", "sweep-summary", "sweep-plot"} <= artifact_keys()
    stamps = {
        r["run"]: (tmp_path / "sweep" / r["run"] / "result.json").stat().st_mtime_ns for r in rows
    }
    again = sweep(config)
    assert all(r["status"].startswith("skipped") for r in again)
    assert [r["best_top1"] for r in again] == [r["best_top1"] for r in rows]
    for r in again:
        assert (tmp_path / "sweep" / r["run"] / "result.json").stat().st_mtime_ns == stamps[
            r["run"]
        ]
    # The same sweep_dir with another base config: refused, old results untouched.
    from pld_pipeline.errors import CheckpointError

    changed = config.model_copy(update={"base": config.base.model_copy(update={"epochs": 3})})
    with pytest.raises(CheckpointError, match="finished run of another config"):
        sweep(changed)
    for r in again:
        assert (tmp_path / "sweep" / r["run"] / "result.json").stat().st_mtime_ns == stamps[
            r["run"]
        ]


def test_sweep_refuses_results_of_another_cache(tiny_cache, tiny_imagefolder, tmp_path):
    """A finished run in sweep_dir trained on another cache is an error, not a skip."""
    import shutil

    from flows.sweep import sweep
    from pld_pipeline.configs.train import SweepConfig
    from pld_pipeline.errors import CheckpointError

    def sweep_on(cache: Path) -> SweepConfig:
        return SweepConfig.model_validate({
            "base": train_config(cache, tiny_imagefolder, tmp_path / "unused"),
            "grid": {"loss.name": ["pld"]}, "sweep_dir": str(tmp_path / "sweep"),
        })  # fmt: skip

    sweep(sweep_on(tiny_cache))
    other = tmp_path / "other-cache"
    shutil.copytree(tiny_cache, other)
    import zarr

    group = zarr.open_group(str(other), mode="r+")
    manifest = dict(group.attrs["pld_cache"])
    manifest["producer"] = "another teacher pass"
    manifest["views"] = dict(manifest["views"], seed=99)  # another view spec: another cache
    group.attrs["pld_cache"] = manifest
    with pytest.raises(CheckpointError, match="trained on another cache"):
        sweep(sweep_on(other))


def test_cli_reports_a_loss_error_in_one_line(tiny_cache, tiny_imagefolder, tmp_path, capsys):
    """A loss error raised inside the flow reaches the user as one line and exit code 2."""
    import yaml

    from flows.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(train_config(tiny_cache, tiny_imagefolder, tmp_path / "r")))
    assert main(["train", "--config", str(config), "loss.temperature=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pld train: error: loss temperature 3 is not cached")
    assert "(cached: 1, 4)" in err


def test_student_run_timeout_fails_naming_the_run_and_resume_finishes(
    tiny_cache, tiny_imagefolder, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.timeouts import RunTimeoutError
    from flows.train_student import train_student
    from pld_pipeline.configs.train import TrainConfig

    run_dir = tmp_path / "slow-run"
    data = train_config(tiny_cache, tiny_imagefolder, run_dir) | {
        "student": {"name": "slow_models:slow_tiny_student", "image_size": 24},
        "epochs": 4, "timeout_s": 1.5,
    }  # fmt: skip
    state = train_student(TrainConfig.model_validate(data), return_state=True)
    assert state.is_failed()
    with pytest.raises(RunTimeoutError) as info:
        state.result()
    assert str(info.value).startswith(
        f"Student run 'slow-run' ({run_dir}) timed out after timeout_s=1.5 s. Resuming is safe"
    )
    with get_client(sync_client=True) as client:
        flow_run_id = state.state_details.flow_run_id
        (task_run,) = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert task_run.state.name == "TimedOut"
    assert "timed out after timeout_s=1.5 s" in task_run.state.message
    assert not (run_dir / "result.json").exists()
    # Resuming is safe: the same run without the limit, resume=true, trains to the end.
    result = train_student(TrainConfig.model_validate(data | {"timeout_s": None, "resume": True}))
    assert result["epochs"] == 4
    epochs = [
        json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [0, 1, 2, 3]


def test_sweep_warns_once_per_grid_point_far_from_the_teacher(
    tiny_cache, tiny_imagefolder, tmp_path, caplog
):
    import logging

    from flows.sweep import sweep
    from pld_pipeline.configs.train import SweepConfig
    from pld_pipeline.student.data import target_fidelity

    base = {**train_config(tiny_cache, tiny_imagefolder, tmp_path / "unused"), "epochs": 1}
    config = SweepConfig.model_validate({
        "base": base, "grid": {"loss.temperature": [4.0], "seed": [0, 1]},
        "sweep_dir": str(tmp_path / "sweep"), "max_parallel": 1,
    })  # fmt: skip
    # pld at T = 4 from the top-4 of an untrained 10-class teacher: most of its mass is
    # outside, and the measured table puts pld there far above 10 %.
    target_fidelity._warned.clear()
    with caplog.at_level(logging.INFO, logger=target_fidelity.__name__):
        sweep(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per grid point; the runs themselves stay quiet
    assert all(w.startswith("Grid point loss.temperature=4.0,seed=") for w in warnings)
    assert all("pld at T=4 from top-4 targets" in w and "a full cache" in w for w in warnings)
