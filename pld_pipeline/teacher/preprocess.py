"""How a model expects its images: input size, normalisation, resize filter, crop fraction.

`resolve_preprocess` takes explicit config values first, then what the model's weights
come with (`model_preprocess`: a torchvision enum's eval transform, a timm model's
pretrained config, a factory's `pretrained_cfg`), then ImageNet defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from pld_pipeline.teacher import timm_models
from pld_pipeline.teacher.weights import resolve_weights

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a model expects its images: side in pixels, normalisation, resize method, crop fraction."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float


def resolve_preprocess(
    name_or_factory: str,
    model: nn.Module | None = None,
    weights: str | None = None,
    input_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> Preprocess:
    """The model's preprocessing: explicit values win, then what the model's weights say
    (`model_preprocess`), then ImageNet defaults (224, bilinear, crop 0.875), which are logged.
    """
    found = model_preprocess(name_or_factory, model, weights)
    defaults = {
        "input_size": 224,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
    }
    given = {
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "interpolation": interpolation,
        "crop_pct": crop_pct,
    }
    values = {}
    for key, default in defaults.items():
        value = given[key] if given[key] is not None else found.get(key)
        if value is None:
            logger.info("Teacher %s: no %s known, using %r", name_or_factory, key, default)
            value = default
        values[key] = value
    return Preprocess(
        input_size=int(values["input_size"]),
        mean=tuple(float(m) for m in values["mean"]),
        std=tuple(float(s) for s in values["std"]),
        interpolation=str(values["interpolation"]),
        crop_pct=float(values["crop_pct"]),
    )


def model_preprocess(
    name_or_factory: str, model: nn.Module | None = None, weights: str | None = None
) -> dict[str, Any]:
    """The preprocessing a model's weights come with (keys of `Preprocess`; missing keys
    unknown): a torchvision enum's eval transform (crop size, resize size, mean, std,
    interpolation); a timm model's pretrained config (`timm.data.resolve_model_data_config`);
    else the model's `pretrained_cfg` dict (the timm convention, also set by
    pld_pipeline.teacher.zoo factories); else nothing."""
    if weights is not None and ":" not in name_or_factory:  # a torchvision name
        tf = resolve_weights(weights, name_or_factory).transforms()
        return {
            "input_size": int(tf.crop_size[0]),
            "mean": tuple(tf.mean),
            "std": tuple(tf.std),
            "interpolation": tf.interpolation.value,
            "crop_pct": float(tf.crop_size[0]) / float(tf.resize_size[0]),
        }
    if model is not None and timm_models.is_timm_name(name_or_factory):
        return timm_models.data_config(model)
    if model is not None and isinstance(getattr(model, "pretrained_cfg", None), dict):
        cfg = model.pretrained_cfg
        size = cfg.get("input_size")
        found = {
            "input_size": int(size[-1]) if isinstance(size, (tuple, list)) else size,
            "mean": tuple(cfg["mean"]) if "mean" in cfg else None,
            "std": tuple(cfg["std"]) if "std" in cfg else None,
            "interpolation": cfg.get("interpolation"),
            "crop_pct": cfg.get("crop_pct"),
        }
        return {key: value for key, value in found.items() if value is not None}
    return {}
