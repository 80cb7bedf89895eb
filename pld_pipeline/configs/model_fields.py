"""The model fields teacher and student configs share: `kwargs`, `pretrained`, and their rules.

Pydantic only (no torch, no timm), so a `pretrained` on a torchvision name or a `kwargs`
entry that has its own field is refused when the config is read, before torch loads.
"""

from __future__ import annotations

from typing import Any

TIMM_PREFIX = "timm:"
# Builder arguments that have their own config field (or that this project sets itself).
RESERVED_KWARGS = {
    "num_classes": "num_classes",
    "pretrained": "pretrained",
    "weights": "weights",
    "checkpoint_path": "checkpoint",
    "pretrained_cfg": "the timm name's tag",
    "pretrained_cfg_overlay": "the timm name's tag",
    "cache_dir": "HF_HOME (the Hugging Face cache)",
}
KWARGS_HELP = (
    "More keyword arguments for the model's builder: `timm.create_model` for a timm name, "
    "the factory for 'module:callable', the torchvision builder for a torchvision name; "
    "e.g. {drop_path_rate: 0.05}. An argument the model does not take is an error"
)
PRETRAINED_HELP = (
    "timm names only: true = the tag's weights from the local Hugging Face cache "
    "($HF_HOME/hub, never downloaded; fetch them with `hf download timm/<tag>`), false = "
    "random init. Unused when checkpoint is set. None = {default}"
)


def check_timm_name(name: str) -> str:
    """Raise ValueError for a `timm:` prefix with no model after it."""
    if name.startswith(TIMM_PREFIX) and not name[len(TIMM_PREFIX) :].strip():
        raise ValueError(f"name {name!r} names no timm model; write e.g. 'timm:resnet50.a1_in1k'")
    return name


def check_model_fields(
    name: str, checkpoint: str | None, pretrained: bool | None, kwargs: dict[str, Any]
) -> None:
    """Raise ValueError for model fields that contradict each other.

    `pretrained` needs a timm name (torchvision names take `weights`, factories load
    their own); `pretrained: true` and a checkpoint are two weights sources; a `kwargs`
    key that has its own field belongs in that field.
    """
    if pretrained is not None and not name.startswith(TIMM_PREFIX):
        raise ValueError(
            f"pretrained applies to timm names ('timm:...'), not {name!r}; load weights with "
            "checkpoint (a teacher also takes a torchvision weights enum)"
        )
    if pretrained and checkpoint:
        raise ValueError(
            "give checkpoint or pretrained: true (weights from the Hugging Face cache), not both"
        )
    for key in kwargs:
        if key in RESERVED_KWARGS:
            raise ValueError(
                f"kwargs.{key} is set by this project; use {RESERVED_KWARGS[key]} instead"
            )
