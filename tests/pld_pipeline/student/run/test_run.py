"""build_run: the one object a student run is; fit is build_run plus the epoch loop."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from train_testlib import train_config

from pld_pipeline.losses.host_sync import host_sync_allowed
from pld_pipeline.student.run import build as run_module
from pld_pipeline.student.run.build import build_run
from pld_pipeline.student.run.train import fit, train_one_epoch

BENCH = Path(__file__).resolve().parents[4] / "bench"


class CrashError(RuntimeError):
    pass


def _crash_after_first_epoch(record):
    raise CrashError(f"stop after epoch {record['epoch']}")


@pytest.mark.parametrize(
    "settings",
    [{}, {"views_per_image": 2, "views_layout": "spread", "optim": {"name": "adamw", "lr": 1e-3}}],
    ids=["one-view", "two-views-spread"],
)
def test_build_run_and_one_epoch_by_hand_equal_fit(replay_cache, color_folder, tmp_path, settings):
    fitted = fit(train_config(replay_cache, color_folder, tmp_path / "fit", epochs=1, **settings))

    run = build_run(
        train_config(replay_cache, color_folder, tmp_path / "run", epochs=1, **settings)
    )
    slabs = run.slabs.get(0)
    record = train_one_epoch(run.step, run.train_batches(0, slabs, 0), slabs, 0, 50, run.ctx)

    expected = torch.load(tmp_path / "fit" / "checkpoint.pt", weights_only=True)
    got = run.model.state_dict()
    assert got.keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(got[name], tensor), name  # bit for bit on the CPU
    assert record["steps"] == fitted.history[0]["steps"] == run.steps_per_epoch
    assert record["train_loss"] == fitted.history[0]["train_loss"]
    assert run.scheduler.last_epoch == expected["scheduler"]["last_epoch"]


def test_a_resumed_run_holds_the_checkpoints_state(replay_cache, color_folder, tmp_path):
    cfg = train_config(replay_cache, color_folder, tmp_path / "r", epochs=3)
    with pytest.raises(CrashError):
        fit(cfg, progress_callback=_crash_after_first_epoch)
    saved = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)

    run = build_run(cfg.model_copy(update={"resume": True}))
    assert (run.start_epoch, run.in_epoch) == (1, None)
    assert [r["epoch"] for r in run.history] == [0]
    assert run.history[0]["train_loss"] == saved["history"][0]["train_loss"]
    for name, tensor in saved["model"].items():
        assert torch.equal(run.model.state_dict()[name], tensor), name
    assert run.scheduler.last_epoch == saved["scheduler"]["last_epoch"] == run.steps_per_epoch
    momentum = run.optimizer.state_dict()["state"]
    assert momentum.keys() == saved["optimizer"]["state"].keys()


class RecordingLoss:
    """A loss that records, per call, whether its host-side value checks were on."""

    def __init__(self, loss):
        self.loss, self.checked = loss, []

    def __call__(self, *args, **kwargs):
        self.checked.append(host_sync_allowed())
        return self.loss(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.loss, name)


def test_loss_inputs_are_checked_once_before_the_first_step_and_never_in_the_loop(
    replay_cache, color_folder, tmp_path, monkeypatch
):
    made = []
    real_make_loss = run_module.make_loss

    def recording_make_loss(*args, **kwargs):
        made.append(RecordingLoss(real_make_loss(*args, **kwargs)))
        return made[-1]

    monkeypatch.setattr(run_module, "make_loss", recording_make_loss)
    run = build_run(train_config(replay_cache, color_folder, tmp_path / "r", epochs=1))
    assert run.criterion is made[0]
    assert made[0].checked == [True]  # the preflight: once, with the value checks
    slabs = run.slabs.get(0)
    record = train_one_epoch(run.step, run.train_batches(0, slabs, 0), slabs, 0, 1, run.ctx)
    assert made[0].checked[1:] == [False] * record["steps"]  # every step: no value checks


def test_the_student_bench_trains_the_runs_build_run_makes(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_student", BENCH / "student.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    built = []

    def recording_build_run(config, *args, **kwargs):
        built.append(run_module.build_run(config, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(bench, "build_run", recording_build_run)
    tiny = "pld_pipeline.demo.small_models:tiny_cnn"
    result = bench.main(
        ["--device", "cpu", "--images", "16", "--batch", "4", "--size", "16",
         "--source-side", "24", "--classes", "4", "--k", "3", "--teacher", tiny,
         "--student", tiny, "--workers", "0", "--warmup-steps", "0", "--fit-rounds", "0"]
    )  # fmt: skip
    assert [run.config.online_teacher is not None for run in built] == [False, True]
    steps = result["paired"]["steps_counted"]
    assert steps == 4  # 16 images, batch 4, no warm-up
    for run in built:  # each mode's student took every paired step
        assert run.scheduler.last_epoch == steps


def test_the_first_epoch_s_views_are_read_while_the_run_is_checked(
    replay_cache, color_folder, tmp_path
):
    """check_run starts reading epoch 0's cached views (a resumed run's epoch is another);
    the slabs equal a plain read of those views."""
    import numpy as np

    import storage
    from pld_pipeline.student.run.inputs import check_run

    cfg = train_config(replay_cache, color_folder, tmp_path / "r", epochs=2, views_per_image=2)
    inputs = check_run(cfg)
    assert sorted(inputs.first_slabs) == [0, 1]  # epoch 0, m = 2: views 0 and 1
    with storage.open_cache(str(replay_cache)) as reader:
        for view, future in inputs.first_slabs.items():
            expected = reader.load_view(view, k=inputs.plan.load_k)
            got = future.result(timeout=60)
            for name in ("topk_idx", "topk_logp", "lse", "crop", "flip", "label"):
                np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    with pytest.raises(CrashError):
        fit(cfg, progress_callback=_crash_after_first_epoch)
    resumed = check_run(cfg.model_copy(update={"resume": True}))
    assert resumed.first_slabs == {}  # it starts at epoch 1: nothing read for epoch 0
