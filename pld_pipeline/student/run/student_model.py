"""The student network from its config: built with its weights source and kwargs, and the
eval crop and resize filter its own pretrained config gives (`eval_crop_pct: model`,
`interpolation: model`)."""

from __future__ import annotations

from typing import get_args

from torch import nn

from pld_pipeline.configs.train import StudentConfig, TrainConfig
from pld_pipeline.errors import ConfigError
from pld_pipeline.teacher.models import check_model_available, create_model
from pld_pipeline.teacher.preprocess import model_preprocess

FROM_MODEL = "model"


def create_student(student: StudentConfig, num_classes: int) -> nn.Module:
    """The student of `student` with `num_classes` outputs, in eval mode on the CPU.

    Weights: `checkpoint`, else (timm names with `pretrained: true`) the local Hugging Face
    cache, else random init.
    """
    return create_model(
        student.name,
        num_classes=num_classes,
        checkpoint=student.checkpoint,
        pretrained=bool(student.pretrained),
        kwargs=student.kwargs,
    )


def check_student_available(student: StudentConfig) -> None:
    """Fail now where `create_student` would fail to find the model or its weights."""
    check_model_available(
        student.name, None, student.checkpoint, bool(student.pretrained), student.kwargs
    )


def with_model_inputs(config: TrainConfig, model: nn.Module) -> TrainConfig:
    """`config` with the student's `eval_crop_pct` / `interpolation` 'model' replaced by the
    values of the student's pretrained config (`preprocess.model_preprocess`); else unchanged.

    Raises:
        ConfigError: 'model' for a student whose model has no pretrained config, or whose
            resize filter is not one the student's views support.
    """
    s = config.student
    wanted = [key for key in ("eval_crop_pct", "interpolation") if getattr(s, key) == FROM_MODEL]
    if not wanted:
        return config
    found = model_preprocess(s.name, model)
    found["eval_crop_pct"] = found.get("crop_pct")
    update = {}
    for key in wanted:
        if found.get(key) is None:
            raise ConfigError(
                f"student.{key}: model, but the student {s.name!r} has no pretrained config "
                f"that gives it; set student.{key} to a value."
            )
        update[key] = found[key]
    allowed = get_args(StudentConfig.model_fields["interpolation"].annotation)
    if update.get("interpolation") not in (None, *allowed):
        raise ConfigError(
            f"student {s.name!r}'s pretrained config resizes with {update['interpolation']!r}, "
            f"which student views do not support; set student.interpolation to one of "
            f"{[a for a in allowed if a != FROM_MODEL]}."
        )
    return config.model_copy(update={"student": s.model_copy(update=update)})
