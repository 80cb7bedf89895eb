"""TrainConfig / SweepConfig: bad values fail with clear messages; expand_grid is stable."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel, ValidationError

from pld_pipeline.configs.loading import validate_config
from pld_pipeline.configs.train import (
    LossConfig,
    OptimConfig,
    StudentConfig,
    SweepConfig,
    TrainConfig,
    expand_grid,
)
from pld_pipeline.errors import ConfigError
from pld_pipeline.losses import LOSS_NAMES

BASE = {"cache": "c.zarr", "dataset_root": "data", "run_dir": "runs/a"}


def test_loss_names_match_losses_package():
    assert typing.get_args(LossConfig.model_fields["name"].annotation) == LOSS_NAMES


@pytest.mark.parametrize(
    "model", [StudentConfig, OptimConfig, LossConfig, TrainConfig, SweepConfig]
)
def test_every_field_has_a_description(model: type[BaseModel]):
    missing = [name for name, f in model.model_fields.items() if not f.description]
    assert missing == []


def test_defaults_are_valid():
    cfg = TrainConfig.model_validate(BASE)
    assert cfg.loss.name == "pld"
    assert cfg.k is None
    assert cfg.target_form == "compact"
    assert cfg.online_teacher is None
    assert cfg.resume is False


BAD = [
    ({"loss": {"name": "hinton"}}, "loss.name", "'pld'"),
    ({"optim": {"lr": -0.1}}, "optim.lr", "lr must be > 0"),
    ({"optim": {"lr": 0}}, "optim.lr", "lr must be > 0"),
    ({"optim": {"name": "rmsprop"}}, "optim.name", "'lamb'"),
    ({"optim": {"nesterov": True, "momentum": 0}}, "optim", "momentum > 0"),
    ({"optim": {"lr": 0.1, "min_lr": 1.0}}, "optim", "min_lr"),
    ({"loss": {"temperature": -1}}, "loss.temperature", "greater than 0"),
    ({"k": 0}, "k", "greater than 0"),
    ({"epochs": 0}, "epochs", "greater than 0"),
    ({"batch_size": -8}, "batch_size", "greater than 0"),
    ({"target_form": "dense", "k": 5}, "(top level)", "target_form='compact'"),
    ({"student": {"std": (0.2, 0.0, 0.2)}}, "student.std", "std must be > 0"),
    ({"amp": "fp8"}, "amp", "'bf16'"),
    ({"lr": 0.1}, "lr", "unknown field (a typo?)"),
]


@pytest.mark.parametrize(("override", "where", "fragment"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_values_raise_clear_config_errors(override, where, fragment):
    with pytest.raises(ConfigError) as info:
        validate_config(TrainConfig, {**BASE, **override})
    text = str(info.value)
    # One line: "Invalid TrainConfig: <field>: <why> (got ...); ...; fix these fields and retry."
    assert "\n" not in text
    assert text.endswith("; fix these fields and retry.")
    assert text.startswith(f"Invalid TrainConfig: {where}: ") or f"; {where}: " in text
    assert fragment in text


def test_loss_kwargs_include_temperature_only_when_set():
    assert LossConfig(name="kd", params={"ce_weight": 0.2}).make_kwargs() == {"ce_weight": 0.2}
    assert LossConfig(name="kd", temperature=2.0).make_kwargs() == {"temperature": 2.0}


def sweep(**grid_and_more) -> SweepConfig:
    grid = grid_and_more.pop("grid")
    return SweepConfig.model_validate(
        {"base": BASE, "grid": grid, "sweep_dir": "sw", **grid_and_more}
    )


def test_expand_grid_is_the_product_with_stable_names():
    s = sweep(grid={"loss.name": ["kd", "pld"], "loss.temperature": [1.0, 4.0], "seed": [0]})
    runs = expand_grid(s)
    names = [name for name, _ in runs]
    assert names == [
        "loss.name=kd,loss.temperature=1.0,seed=0",
        "loss.name=kd,loss.temperature=4.0,seed=0",
        "loss.name=pld,loss.temperature=1.0,seed=0",
        "loss.name=pld,loss.temperature=4.0,seed=0",
    ]
    assert names == [name for name, _ in expand_grid(s)]  # same grid, same names
    name, cfg = runs[3]
    assert (cfg.loss.name, cfg.loss.temperature, cfg.seed) == ("pld", 4.0, 0)
    assert cfg.run_dir.endswith("sw/" + name)
    assert cfg.cache == "c.zarr"  # the rest comes from base


def test_expand_grid_sets_k_student_and_loss_params():
    s = sweep(grid={"k": [2, None], "student.name": ["mod:make"], "loss.params.ce_weight": [0.5]})
    (n1, c1), (n2, c2) = expand_grid(s)
    assert (c1.k, c2.k) == (2, None)
    assert c1.student.name == "mod:make"
    assert c1.loss.params == {"ce_weight": 0.5}
    assert ":" not in n1
    assert n1 == "k=2,student.name=mod-make,loss.params.ce_weight=0.5"
    assert n2.startswith("k=null,")


def test_empty_grid_is_one_base_run():
    [(name, cfg)] = expand_grid(sweep(grid={}))
    assert name == "base"
    assert cfg.run_dir.endswith("sw/base")


@pytest.mark.parametrize(
    ("grid", "fragment"),
    [
        ({"loss.nam": ["kd"]}, "'nam' is not a field of LossConfig"),
        ({"epochs.x": [1]}, "is a value, not a section"),
        ({"loss.name": []}, "is empty"),
        ({"loss.name": ["hinton"]}, "not a valid TrainConfig"),
        ({"optim.lr": [-1.0]}, "lr must be > 0"),
        ({"run_dir": ["x"]}, "may not vary run_dir"),
        ({"student.name": ["a:b", "a/b"]}, "both get run name"),
    ],
)
def test_bad_grids_fail_at_validation(grid, fragment):
    with pytest.raises(ValidationError, match=fragment.replace("(", r"\(")):
        sweep(grid=grid)


def test_max_parallel_must_be_positive():
    with pytest.raises(ValidationError, match="max_parallel"):
        sweep(grid={}, max_parallel=0)
