"""Teacher and student models by name (torchvision, `timm:` or `module:callable`) and their preprocessing.

`create_model` builds the network (weights from local files only, see weights.py and, for
`timm:` names, timm_models.py); `teacher_info` writes the cache manifest's teacher entry,
with the preprocessing of preprocess.py (input size, normalisation, interpolation, crop
fraction); `load_teacher` does both from a `TeacherConfig`.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torchvision.models as tvm
from torch import nn

from pld_pipeline.errors import ConfigError, ModelNotFoundError
from pld_pipeline.teacher import timm_models
from pld_pipeline.teacher.preprocess import (  # resolve_preprocess: also imported from here
    Preprocess,
    resolve_preprocess,
)
from pld_pipeline.teacher.weights import (
    checkpoint_file,
    load_weights_into,
    local_weights_only,
    resolve_weights,
    sha256_file,
    state_dict_sha256,
    weights_file,
)
from storage import TeacherInfo

if TYPE_CHECKING:
    from pld_pipeline.configs.cache import TeacherConfig


# Module paths that factory names stored before the wings move (cache manifests, run configs,
# users' configs) still use: one table instead of shim modules at the old paths. A name is
# recorded as given, so an old cache or run keeps comparing equal to its own config.
FACTORY_MODULE_ALIASES = {
    "pld_pipeline.zoo": "pld_pipeline.teacher.zoo",
    "pld_pipeline.small_models": "pld_pipeline.demo.small_models",
}


def resolve_factory_alias(ref: str) -> str:
    """`module:callable` with an old module path replaced by its home today (else as given)."""
    module_name, sep, attr = ref.partition(":")
    return FACTORY_MODULE_ALIASES.get(module_name, module_name) + sep + attr


def is_factory(name: str) -> bool:
    """True for a `module:callable` model reference (a `timm:` name is not one)."""
    return ":" in name and not timm_models.is_timm_name(name)


def model_identity(name: str, kwargs: dict[str, Any] | None = None) -> str:
    """The name a manifest records: `name` as given, with its kwargs (JSON) when there are
    any, and a `timm:` name resolved to its pretrained tag ("timm:resnet50" ->
    "timm:resnet50.a1_in1k"), so the manifest says which weights and architecture ran."""
    if timm_models.is_timm_name(name):
        name = timm_models.TIMM_PREFIX + timm_models.resolve_tag(name).model_name
    return f"{name} {json.dumps(kwargs, sort_keys=True)}" if kwargs else name


def create_model(
    name_or_factory: str,
    num_classes: int | None = None,
    weights: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a model in eval mode on the CPU.

    Args:
        name_or_factory: a torchvision classification model name ("resnet50"),
            "timm:<architecture>[.<tag>]" ("timm:convnext_base.fb_in22k_ft_in1k", needs the
            timm extra) or "package.module:callable" returning an nn.Module (called with
            `num_classes=` when num_classes is given).
        num_classes: output classes; default: the weights' category count or the builder's.
        weights: torchvision weights enum, "ResNet50_Weights.IMAGENET1K_V2" (or the short
            "IMAGENET1K_V2"/"DEFAULT" for the named model); torchvision names only.
        checkpoint: a state-dict file (or a training checkpoint holding one under
            "model"/"state_dict"), loaded after building; not together with `weights`.
        pretrained: `timm:` names without a checkpoint: the tag's weights from the local
            Hugging Face cache (else random init).
        kwargs: more keyword arguments for the builder, the factory or `timm.create_model`
            (e.g. {"drop_path_rate": 0.05}).

    Returns:
        The model, in eval mode.

    Raises:
        ModelNotFoundError: unknown name or unimportable factory.
        WeightsNotFoundError: weights/checkpoint file missing (says where to put it).
        WeightsCorruptError: file hash or keys do not match the model.
        ConfigError: inconsistent arguments (weights with a factory or a timm name, both
            weights and checkpoint, num_classes different from the weights'), or kwargs the
            model does not take.
        MissingExtraError: a `timm:` name without timm installed.
    """
    if weights is not None and checkpoint is not None:
        raise ConfigError(
            f"Give weights ({weights!r}) or checkpoint ({str(checkpoint)!r}), not both."
        )
    if timm_models.is_timm_name(name_or_factory):
        _no_enum(weights, name_or_factory)
        model, _ = timm_models.create_timm_model(
            name_or_factory, num_classes, checkpoint, pretrained, kwargs
        )
        return model
    if is_factory(name_or_factory):
        _no_enum(weights, name_or_factory)
        model = _with_kwargs(name_or_factory, kwargs, _call_factory, num_classes)
    else:
        model = _with_kwargs(name_or_factory, kwargs, _build_torchvision, num_classes, weights)
    if checkpoint is not None:
        load_weights_into(model, checkpoint)
    return model.eval()


def _no_enum(weights: str | None, name: str) -> None:
    if weights is not None:
        raise ConfigError(
            f"weights={weights!r} names a torchvision weights enum, but the model {name!r} is "
            + (
                "a timm model; load its weights with checkpoint=PATH or pretrained: true "
                "(the local Hugging Face cache)."
                if timm_models.is_timm_name(name)
                else "a factory; load its weights in the factory or pass checkpoint=PATH."
            )
        )


def _with_kwargs(name: str, kwargs: dict[str, Any] | None, build: Any, *args: Any) -> nn.Module:
    """`build(name, *args, **kwargs)`, a TypeError from unknown kwargs as a ConfigError."""
    if not kwargs:
        return build(name, *args)
    try:
        return build(name, *args, **kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"Model {name!r} does not take the kwargs {sorted(kwargs)}: {exc}. Check their "
            "names against the model's builder."
        ) from exc


def check_model_available(
    name_or_factory: str,
    weights: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Fail now, without building anything, where `create_model` would fail to find the model.

    Checks the torchvision name, the timm name (and its kwargs, on the meta device) or
    imports the factory, and that a weights enum's file, a checkpoint file or a timm tag's
    file in the local Hugging Face cache is on this machine; a run calls it before it starts.

    Raises:
        ModelNotFoundError: unknown name or unimportable factory.
        MissingExtraError: a `timm:` name without timm installed.
        ConfigError: unknown weights enum, weights with a factory, kwargs a timm model does
            not take.
        WeightsNotFoundError: the weights or checkpoint file is missing (says where to put it).
    """
    if timm_models.is_timm_name(name_or_factory):
        _no_enum(weights, name_or_factory)
        timm_models.check_timm_available(name_or_factory, checkpoint, pretrained, kwargs)
        return
    if is_factory(name_or_factory):
        _find_factory(name_or_factory)
        _no_enum(weights, name_or_factory)
    else:
        _check_torchvision_name(name_or_factory)
        if weights is not None:
            weights_file(resolve_weights(weights, name_or_factory))
    if checkpoint is not None:
        checkpoint_file(checkpoint)


def _find_factory(ref: str) -> Any:
    module_name, _, attr = resolve_factory_alias(ref).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelNotFoundError(
            f"Cannot import module {module_name!r} of model factory {ref!r}: {exc}; check the "
            "name and that its package is installed."
        ) from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelNotFoundError(
                f"Module {module_name!r} has no attribute {attr!r} (model factory {ref!r})."
            )
    if not callable(factory):
        raise ModelNotFoundError(f"Model factory {ref!r} is not callable.")
    return factory


def _call_factory(ref: str, num_classes: int | None, **kwargs: Any) -> nn.Module:
    factory = _find_factory(ref)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelNotFoundError(
            f"Model factory {ref!r} returned {type(model).__name__}, not a torch.nn.Module."
        )
    return model


def _check_torchvision_name(name: str) -> None:
    available = tvm.list_models(module=tvm)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        raise ModelNotFoundError(
            f"Unknown torchvision classification model {name!r} (close: {close}); use a name "
            "from torchvision.models.list_models() or a 'module:callable' factory."
        )


def _build_torchvision(
    name: str, num_classes: int | None, weights: str | None = None, **kwargs: Any
) -> nn.Module:
    _check_torchvision_name(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if weights is None:
        return tvm.get_model(name, weights=None, **kwargs)
    enum = resolve_weights(weights, name)
    categories = len(enum.meta.get("categories") or [])
    if num_classes is not None and categories and num_classes != categories:
        raise ConfigError(
            f"Weights {weights!r} have {categories} classes but num_classes={num_classes}; "
            f"drop num_classes or fine-tune and pass the result as checkpoint=PATH."
        )
    weights_file(enum)  # a missing file fails here, naming the exact path
    with local_weights_only():
        return tvm.get_model(name, weights=enum, **kwargs)


def count_classes(model: nn.Module) -> int | None:
    """Output classes of a classifier: `num_classes` attribute, else the last Linear's width."""
    value = getattr(model, "num_classes", None)
    if isinstance(value, int):
        return value
    last: nn.Linear | None = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return int(last.out_features) if last is not None else None


def weights_identity(
    name_or_factory: str,
    model: nn.Module,
    weights: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
) -> tuple[str, str]:
    """(weights_source, weights_sha256) for the manifest.

    Enum weights: ("torchvision:<enum>", sha256 of the file); checkpoint: ("<path>", sha256 of
    the file); a timm tag from the local Hugging Face cache: ("hf-cache:<repo>@<commit>/<file>",
    sha256 of the file); a factory without checkpoint: ("factory:<ref>", sha256 of its state
    dict in key order, see `state_dict_sha256`); random init: ("none", or for a timm name
    "random-init:timm:<tag>", with the same state-dict hash).
    """
    if timm_models.is_timm_name(name_or_factory):
        tag = timm_models.resolve_tag(name_or_factory)
        found = timm_models.resolve_weights(name_or_factory, tag, checkpoint, pretrained)
        source, digest = found.identity(tag)
        return source, digest or state_dict_sha256(model)
    if checkpoint is not None:
        return str(checkpoint), sha256_file(checkpoint)
    if weights is not None:
        enum = resolve_weights(weights, name_or_factory)
        return f"torchvision:{enum}", sha256_file(weights_file(enum))
    source = f"factory:{name_or_factory}" if is_factory(name_or_factory) else "none"
    return source, state_dict_sha256(model)


def teacher_info(
    name_or_factory: str,
    model: nn.Module,
    weights: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    preprocess: Preprocess | None = None,
    pretrained: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> TeacherInfo:
    """The manifest's teacher entry: name (`model_identity`), weights source and sha256,
    classes, preprocessing.

    Raises:
        ConfigError: the class count cannot be found (set num_classes).
    """
    pre = preprocess or resolve_preprocess(name_or_factory, model, weights)
    classes = num_classes or count_classes(model)
    if classes is None:
        raise ConfigError(
            f"Cannot tell how many classes teacher {name_or_factory!r} outputs; set "
            "teacher.num_classes."
        )
    source, digest = weights_identity(name_or_factory, model, weights, checkpoint, pretrained)
    return TeacherInfo(
        name=model_identity(name_or_factory, kwargs),
        weights_source=source,
        weights_sha256=digest,
        num_classes=int(classes),
        input_size=pre.input_size,
        mean=pre.mean,
        std=pre.std,
        interpolation=pre.interpolation,
    )


@dataclass
class LoadedTeacher:
    """A teacher ready for the pass: the model (eval, CPU), its manifest entry, its crop fraction."""

    model: nn.Module
    info: TeacherInfo
    preprocess: Preprocess


def load_teacher(config: TeacherConfig) -> LoadedTeacher:
    """Build the teacher of a `TeacherConfig` with its preprocessing and manifest entry.

    A `timm:` teacher loads its tag's weights from the local Hugging Face cache unless it
    has a checkpoint or `pretrained: false`.
    """
    pretrained = teacher_pretrained(config)
    model = create_model(
        config.name, config.num_classes, config.weights, config.checkpoint, pretrained,
        config.kwargs,
    )  # fmt: skip
    pre = resolve_preprocess(
        config.name,
        model,
        config.weights,
        config.input_size,
        tuple(config.mean) if config.mean else None,
        tuple(config.std) if config.std else None,
        config.interpolation,
        config.crop_pct,
    )
    info = teacher_info(
        config.name, model, config.weights, config.checkpoint, config.num_classes, pre,
        pretrained, config.kwargs,
    )  # fmt: skip
    return LoadedTeacher(model=model, info=info, preprocess=pre)


def teacher_pretrained(config: TeacherConfig) -> bool:
    """A `timm:` teacher loads its tag's pretrained weights unless `pretrained: false`."""
    return config.pretrained is not False


def check_teacher_available(config: TeacherConfig) -> None:
    """`check_model_available` for the teacher of a `TeacherConfig` (what `load_teacher` builds)."""
    check_model_available(
        config.name, config.weights, config.checkpoint, teacher_pretrained(config), config.kwargs
    )
