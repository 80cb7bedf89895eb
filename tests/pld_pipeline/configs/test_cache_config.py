"""CacheConfig / TeacherConfig / ViewConfig: defaults, validation messages, manifest view entry."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import storage
from pld_pipeline.configs.cache import CacheConfig, TeacherConfig, ViewConfig

BASE = {"dataset_root": "/data/imagenet", "teacher": {"name": "resnet50"}, "output": "runs/c"}


def test_defaults_and_descriptions() -> None:
    config = CacheConfig.model_validate(BASE)
    assert (config.format, config.k, config.temperatures) == ("topk", 10, (1.0,))
    assert (config.views.mode, config.views.num_views, config.amp) == ("eval", 1, "auto")
    for model in (CacheConfig, TeacherConfig, ViewConfig):
        missing = [n for n, f in model.model_fields.items() if not f.description]
        assert not missing, f"{model.__name__} fields without description: {missing}"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"k": 0}, "greater than or equal to 1"),
        ({"temperatures": [2.0, 4.0]}, "must include 1.0"),
        ({"temperatures": [1.0, -2.0]}, "must be positive"),
        ({"temperatures": [1.0, 1.0]}, "distinct"),
        ({"views": {"mode": "eval", "num_views": 4}}, "eval mode has exactly one view"),
        ({"views": {"mode": "replay", "num_views": 2, "scale": [0.5, 0.2]}}, "scale must satisfy"),
        ({"views": {"mode": "replay", "num_views": 2, "ratio": [0.0, 1.0]}}, "ratio must satisfy"),
        ({"views": {"seed": -3}}, "greater than or equal to 0"),
        ({"teacher": {"name": "resnet50", "num_classes": 5}, "k": 10}, "k=10 exceeds"),
        ({"teacher": {"name": "m:f", "weights": "IMAGENET1K_V1"}}, "is a factory"),
        ({"teacher": {"name": "resnet50", "weights": "W", "checkpoint": "c.pt"}}, "not both"),
        ({"teacher": {"name": "resnet50", "std": [0.2, 0.0, 0.2]}}, "std must be positive"),
        ({"device": "gpu"}, "device must be"),
        ({"amp": "int8"}, "Input should be"),
        ({"dask_address": "tcp://h:8786"}, "needs task_runner='dask'"),
        ({"batchsize": 3}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_configs_name_the_problem(change: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        CacheConfig.model_validate(BASE | change)


def test_view_info_for_the_manifest() -> None:
    config = CacheConfig.model_validate(
        BASE | {"views": {"mode": "replay", "num_views": 4, "seed": 9}}
    )
    info = config.view_info(crop_pct=0.95)
    assert isinstance(info, storage.ViewInfo)
    assert (info.mode, info.num_views, info.seed, info.crop_pct) == ("replay", 4, 9, 0.95)
    assert info.scale == (0.08, 1.0)
