"""fit on tiny caches: every loss learns, run directory contents, cache checks before step one."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import zarr
from train_testlib import build_color_folder, make_cache, train_config

import storage
from pld_pipeline.errors import CheckpointError, ConfigError, ModelNotFoundError
from pld_pipeline.losses import LOSS_NAMES, LossInputError, TemperatureNotCachedError
from pld_pipeline.student.run.train import fit


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_each_loss_trains_and_the_loss_decreases(loss, replay_cache, color_folder, tmp_path):
    # Full batches (k=4 of 6 classes), 8 steps. KD (T^2 = 16) and DKD (beta * T^2 = 128)
    # scale their gradients up, so they take smaller step sizes.
    lr = {"kd": 0.02, "dkd": 0.005}.get(loss, 0.1)
    cfg = train_config(
        replay_cache,
        color_folder,
        tmp_path / loss,
        loss={"name": loss},
        epochs=8,
        batch_size=24,
        optim={"lr": lr},
    )
    result = fit(cfg)
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 8
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    assert (result.loss, result.k, result.distinct_views, result.views_match) == (loss, 4, 2, True)
    if loss == "pld":  # compact targets drop the teacher mass outside top-K and the label
        assert 0 < result.mean_dropped_weight < 1
    else:
        assert result.mean_dropped_weight is None


@pytest.mark.parametrize("schema_version", [2, 3])  # the first q8 layout, and today's
def test_q8_caches_of_both_layouts_train_as_their_fp16_twin(schema_version, color_folder, tmp_path):
    fp16 = make_cache(tmp_path / "fp16.zarr", color_folder)
    q8 = make_cache(
        tmp_path / "q8.zarr", color_folder, record_precision="q8", schema_version=schema_version
    )
    assert zarr.open_group(str(q8), mode="r").attrs["schema_version"] == schema_version
    histories = {}
    for name, cache in (("fp16", fp16), ("q8", q8)):
        for loss in ("pld", "kd"):
            cfg = train_config(
                cache, color_folder, tmp_path / f"{name}-{loss}", loss={"name": loss},
                epochs=3, batch_size=24, optim={"lr": 0.02},
            )  # fmt: skip
            histories[name, loss] = [r["train_loss"] for r in fit(cfg).history]
    for loss in ("pld", "kd"):
        # Same views, same seed: 8-bit log-probs move the losses by a rounding error only.
        assert np.allclose(histories["q8", loss], histories["fp16", loss], rtol=2e-3, atol=0)
        assert histories["q8", loss] != histories["fp16", loss]  # it did read the q8 cache


def test_run_directory_and_result(replay_cache, color_folder, color_val_folder, tmp_path):
    seen = []
    cfg = train_config(
        replay_cache,
        color_folder,
        tmp_path / "run",
        val_root=str(color_val_folder),
        epochs=3,
        loss={"name": "kd", "temperature": 2.0, "params": {"ce_weight": 0.2}},
    )
    result = fit(cfg, progress_callback=seen.append)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "best.pt",
        "result.json",
    }
    assert json.loads((run / "config.json").read_text()) == cfg.model_dump(mode="json")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2] == [r["epoch"] for r in seen]
    assert [r["view"] for r in lines] == [0, 1, 0]
    evaluated = {"val_top1", "val_top5", "val_nll", "val_ece", "val_confidence"}
    assert evaluated | {"train_loss", "lr", "target_time_s"} <= set(lines[0])
    stored = json.loads((run / "result.json").read_text())
    assert stored == json.loads(json.dumps(result.to_dict()))
    assert stored["manifest_hash"] == result.manifest_hash
    assert len(result.manifest_hash) == 64
    assert (stored["cache_format"], stored["k"], stored["loss"], stored["temperature"]) == (
        "topk",
        4,
        "kd",
        2.0,
    )
    assert stored["loss_params"]["ce_weight"] == 0.2
    assert lines[0]["val_samples"] == 9
    assert result.final_top1 == lines[-1]["val_top1"]
    assert result.best_top1 == max(r["val_top1"] for r in lines)
    # Per metric: best over epochs (max for accuracies, min for NLL/ECE), final, at best top-1.
    for name, pick in (("top1", max), ("top5", max), ("nll", min), ("ece", min)):
        values = [r[f"val_{name}"] for r in lines]
        entry = stored["metrics"][name]
        assert entry["best"] == pick(values)
        assert values[entry["best_epoch"]] == pick(values)
        assert values.index(pick(values)) == entry["best_epoch"]  # the first epoch on a tie
        assert (entry["final"], entry["final_epoch"]) == (values[-1], 2)
        assert entry["at_best_epoch"] == values[result.best_epoch]
    conf = stored["metrics"]["confidence"]
    assert conf["best"] is None
    assert conf["final"] == lines[-1]["val_confidence"]
    assert (stored["final_nll"], stored["final_ece"], stored["final_confidence"]) == (
        lines[-1]["val_nll"], lines[-1]["val_ece"], lines[-1]["val_confidence"]
    )  # fmt: skip
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2
    assert set(ck) >= {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "best",
    }
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == result.best_epoch
    with pytest.raises(CheckpointError, match="resume=true"):
        fit(cfg)  # the folder holds a run: refuse to overwrite it


def test_pld_learns_the_loss_decreases_and_it_beats_an_untrained_model(
    replay_cache, color_folder, tmp_path
):
    """Fails when learning breaks: a fixed-seed PLD run against the same model untrained.

    "Untrained" is the same seed's initial weights evaluated by the same code: a run whose
    learning rate (1e-12) leaves every weight where it started.
    """
    val = build_color_folder(tmp_path / "val", per_class=10, seed=5)  # 30 unseen images

    def run(name: str, lr: float):
        cfg = train_config(replay_cache, color_folder, tmp_path / name, val_root=str(val),
                           epochs=6, batch_size=8, optim={"lr": lr}, seed=0)  # fmt: skip
        return fit(cfg)

    trained, untrained = run("pld", 0.05), run("untrained", 1e-12)
    losses = [r["train_loss"] for r in trained.history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(b < a * 1.05 for a, b in zip(losses, losses[1:])), losses  # no epoch jumps up
    before = untrained.history[0]["val_top1"]
    assert untrained.final_top1 == before  # the weights did not move
    assert trained.final_top1 >= 90.0, (trained.final_top1, before)
    assert trained.final_top1 >= before + 30.0, (trained.final_top1, before)
    assert trained.final_nll < untrained.final_nll


def test_k_from_topk_and_full_caches_and_dense_targets(
    replay_cache, full_cache, color_folder, tmp_path
):
    r = fit(train_config(replay_cache, color_folder, tmp_path / "a", k=2, epochs=1))
    assert r.k == 2
    assert r.cache_format == "topk"
    r = fit(train_config(full_cache, color_folder, tmp_path / "b", k=5, epochs=1))
    assert (r.k, r.target_form, r.cache_format) == (5, "compact", "full")
    r = fit(
        train_config(
            full_cache,
            color_folder,
            tmp_path / "c",
            target_form="dense",
            epochs=1,
            loss={"name": "pld", "temperature": 3.0},
        )
    )  # any T from dense logits
    assert (r.k, r.target_form, r.mean_dropped_weight) == (6, "dense", None)


def test_eval_cache_says_views_differ(eval_cache, color_folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pld_pipeline"):
        r = fit(train_config(eval_cache, color_folder, tmp_path / "e", epochs=2))
    assert r.views_match is False
    assert "views differ" in caplog.text


def test_amp_channels_last_clipping_and_other_optimizers_run(replay_cache, color_folder, tmp_path):
    for i, extra in enumerate(
        [
            {"amp": "bf16", "channels_last": True},
            {"optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "clip_grad_norm": 0.5}},
            {
                "optim": {"name": "lamb", "lr": 1e-3, "warmup_epochs": 1},
                "loss": {"name": "ce", "params": {"label_smoothing": 0.1}},
            },
        ]
    ):
        r = fit(train_config(replay_cache, color_folder, tmp_path / str(i), epochs=1, **extra))
        assert r.history[0]["nonfinite_steps"] == 0


def _no_step_taken(run_dir):
    return not (run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.jsonl").exists()


MISMATCHES = [
    ("incomplete", {}, storage.IncompleteCacheError, "incomplete"),
    ("other dataset", {"dataset": "val"}, storage.DatasetMismatchError, "another dataset"),
    (
        "num_classes",
        {
            "student": {
                "name": "pld_pipeline.demo.small_models:tiny_cnn",
                "image_size": 16,
                "num_classes": 5,
            }
        },
        storage.ManifestMismatchError,
        "num_classes",
    ),
    (
        "temperature not cached",
        {"loss": {"name": "kd", "temperature": 3.0}},
        TemperatureNotCachedError,
        "3 is not cached",
    ),
    (
        "default temperature not cached",
        {"loss": {"name": "kd"}},
        TemperatureNotCachedError,
        "not cached",
    ),
    ("k too large", {"k": 5}, ConfigError, "k=5 exceeds"),
    ("dense from top-k", {"target_form": "dense"}, ConfigError, "full-logit cache"),
    ("unknown model", {"student": {"name": "resnet9000"}}, ModelNotFoundError, "resnet9000"),
    (
        "unknown loss param",
        {"loss": {"name": "kd", "params": {"alpha": 1}}},
        LossInputError,
        "alpha",
    ),
    ("batch too large", {"batch_size": 64}, ConfigError, "larger than the 24"),
    ("more views than cached", {"views_per_image": 3}, ConfigError, "views_per_image=3"),
    (
        "batch of split images",
        {"views_per_image": 2, "batch_size": 7},
        ConfigError,
        "multiple of 2",
    ),
    ("non-finite cached targets", {}, LossInputError, "view 0, sample 5: topk_logp"),
]


def mismatch_config(case, override, replay_cache, color_folder, color_val_folder, tmp_path):
    """The TrainConfig of one MISMATCHES row (its run_dir: tmp_path / "run")."""
    cache, root = replay_cache, color_folder
    if case == "incomplete":
        cache = make_cache(tmp_path / "half.zarr", color_folder, views_done=1)
    override = dict(override)  # the table's dicts are shared by two tests
    if override.pop("dataset", None) == "val":
        root = color_val_folder
    if case == "default temperature not cached":  # kd defaults to T=4: a cache without it
        cache = make_cache(tmp_path / "t12.zarr", color_folder, temperatures=(1.0, 2.0))
    if case == "non-finite cached targets":  # checked once as the slab loads, not per step
        cache = make_cache(tmp_path / "nan.zarr", color_folder)
        # The writer refuses NaN: damage a finished cache with plain zarr.
        zarr.open_group(str(cache), mode="r+")["topk_logp"][0, 5, 1] = np.nan
    return train_config(cache, root, tmp_path / "run", **override)


@pytest.mark.parametrize(
    ("case", "override", "error", "fragment"), MISMATCHES, ids=[m[0] for m in MISMATCHES]
)
def test_mismatches_fail_before_the_first_step(
    case, override, error, fragment, replay_cache, color_folder, color_val_folder, tmp_path
):
    config = mismatch_config(case, override, replay_cache, color_folder, color_val_folder, tmp_path)
    with pytest.raises(error, match=fragment):
        fit(config)
    assert _no_step_taken(tmp_path / "run")


# Non-finite targets are found as the cached slab loads (reading every target before the
# run starts would cost a pass over the cache): fit finds them, the preflight does not.
PREFLIGHT_MISMATCHES = [m for m in MISMATCHES if m[0] != "non-finite cached targets"]


@pytest.mark.parametrize(
    ("case", "override", "error", "fragment"),
    PREFLIGHT_MISMATCHES,
    ids=[m[0] for m in PREFLIGHT_MISMATCHES],
)
def test_preflight_finds_the_same_mismatches_writing_nothing(
    case, override, error, fragment, replay_cache, color_folder, color_val_folder, tmp_path
):
    """`pld` runs this before a flow starts: the same errors as `fit`, and no run folder."""
    from pld_pipeline.student.run.inputs import check_run as check_train_run

    config = mismatch_config(case, override, replay_cache, color_folder, color_val_folder, tmp_path)
    with pytest.raises(error, match=fragment):
        check_train_run(config)
    assert not (tmp_path / "run").exists()


def test_preflight_passes_a_good_run_and_writes_nothing(replay_cache, color_folder, tmp_path):
    from pld_pipeline.student.run.inputs import check_run as check_train_run

    check_train_run(train_config(replay_cache, color_folder, tmp_path / "run"))
    assert list(tmp_path.iterdir()) == []


def test_cached_training_never_builds_a_teacher(replay_cache, color_folder, tmp_path, monkeypatch):
    import pld_pipeline.teacher.models

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was built")

    monkeypatch.setattr(pld_pipeline.teacher.models, "load_teacher", refuse)
    monkeypatch.setattr(
        "pld_pipeline.student.run.online_teacher.load_teacher", refuse, raising=False
    )
    assert fit(train_config(replay_cache, color_folder, tmp_path / "r", epochs=1)).online is False
