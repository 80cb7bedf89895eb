"""timm models by `timm:<architecture>[.<tag>]` name: build, weights from local files, preprocessing.

timm is an optional extra (`pip install "pld-pipeline[timm]"`); it is imported only when a
`timm:` name is used, and without it that name is one `MissingExtraError`.

Weights come from one of three places, in this order, and never from the network:
1. a `checkpoint` file (a state dict, loaded strictly with weights_only=True);
2. the Hugging Face hub's local cache (`$HF_HUB_CACHE`, default `$HF_HOME/hub`): the tag's
   repo (`timm/<architecture>.<tag>`) as `hf download` leaves it. The file is looked up
   with `huggingface_hub.try_to_load_from_cache`, which never touches the network, and is
   handed to timm as a local file, so timm's own loader (classifier reset for another
   class count, position-embedding resampling) loads it and no download is attempted;
3. random init, when `pretrained` is false.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from pld_pipeline.configs.model_fields import TIMM_PREFIX
from pld_pipeline.errors import (
    ConfigError,
    MissingExtraError,
    ModelNotFoundError,
    WeightsCorruptError,
    WeightsNotFoundError,
)
from pld_pipeline.teacher.weights import checkpoint_file, load_weights_into, sha256_file

logger = logging.getLogger(__name__)

INSTALL_EXTRA = 'pip install "pld-pipeline[timm]"'
# The hub's file names for timm weights, in the order timm itself prefers them.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_timm_name(name: str) -> bool:
    """True for a `timm:<architecture>[.<tag>]` model name."""
    return name.startswith(TIMM_PREFIX)


def import_timm(name: str) -> ModuleType:
    """The timm module, or a `MissingExtraError` naming the extra that installs it."""
    try:
        import timm  # noqa: PLC0415 - optional: only `timm:` names need it
    except ImportError as exc:
        raise MissingExtraError(
            f"Model {name!r} needs timm, which is not installed here ({exc}); install the "
            f"extra: {INSTALL_EXTRA}."
        ) from exc
    return timm


@dataclass(frozen=True)
class TimmTag:
    """A resolved `timm:` name: the architecture, its pretrained tag and that tag's config."""

    architecture: str
    tag: str  # "" when the architecture has no pretrained configs
    pretrained_cfg: dict[str, Any]

    @property
    def model_name(self) -> str:
        """`architecture.tag`, what `timm.create_model` is given."""
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture

    @property
    def hub_id(self) -> str | None:
        """The tag's Hugging Face repo, e.g. 'timm/resnet50.a1_in1k' (None: no hub weights)."""
        return self.pretrained_cfg.get("hf_hub_id")


def resolve_tag(name: str) -> TimmTag:
    """The architecture and pretrained tag of a `timm:` name (default tag when none is given).

    Raises:
        MissingExtraError: timm is not installed.
        ModelNotFoundError: unknown architecture or tag (the message lists close names).
    """
    timm = import_timm(name)
    wanted = name[len(TIMM_PREFIX) :]
    architecture, tag = timm.models.split_model_name_tag(wanted)
    if not architecture or not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=3)
        raise ModelNotFoundError(
            f"Unknown timm architecture {architecture!r} in {name!r} (close: {close}); use a "
            "name from timm.list_models(), e.g. 'timm:resnet50.a1_in1k'."
        )
    tags = timm.models.get_arch_pretrained_cfgs(architecture)
    if tag and f"{architecture}.{tag}" not in tags and tag not in tags:
        raise ModelNotFoundError(
            f"timm architecture {architecture!r} has no pretrained tag {tag!r} (tags: "
            f"{sorted(tags)}); see timm.list_pretrained('{architecture}*')."
        )
    cfg = timm.models.get_pretrained_cfg(wanted) if tags else None
    cfg_dict = cfg.to_dict() if cfg is not None else {}
    return TimmTag(architecture, str(cfg_dict.get("tag") or tag or ""), cfg_dict)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache this process reads (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants  # noqa: PLC0415 - a timm dependency

    return Path(constants.HF_HUB_CACHE)


def hub_weights_file(tag: TimmTag, name: str) -> Path:
    """The tag's weights file in the local Hugging Face cache; nothing is downloaded.

    Raises:
        WeightsNotFoundError: not in the cache (says which path, and the command that
            fetches it on a machine with internet).
        ConfigError: the tag has no hub weights (use a checkpoint or pretrained: false).
    """
    if not tag.hub_id:
        raise ConfigError(
            f"timm model {tag.model_name!r} ({name!r}) has no Hugging Face weights; give "
            "checkpoint=PATH or pretrained: false."
        )
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - a timm dependency

    repo_id, _, revision = tag.hub_id.partition("@")
    override = tag.pretrained_cfg.get("hf_hub_filename")
    for filename in (override,) if override else HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    folder = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    raise WeightsNotFoundError(
        f"Weights of timm model {tag.model_name!r} ({name!r}) are not on this machine: "
        f"expected the Hugging Face repo {repo_id!r} under {str(folder)} (the cache is "
        "$HF_HUB_CACHE, default $HF_HOME/hub). On a machine with internet run "
        f"`hf download {repo_id}` (older huggingface_hub: `huggingface-cli download "
        f"{repo_id}`), copy its cache folder here and point HF_HOME at it; or give "
        "checkpoint=PATH, or pretrained: false for random init. Nothing is downloaded at "
        "run time."
    )


@dataclass(frozen=True)
class TimmWeights:
    """Where a timm model's weights come from: ('checkpoint' | 'hf-cache' | 'none', file)."""

    kind: str
    path: Path | None

    def identity(self, tag: TimmTag) -> tuple[str, str | None]:
        """(weights_source, sha256 of the file or None for random init) for the manifest."""
        if self.kind == "checkpoint":
            return str(self.path), sha256_file(self.path)
        if self.kind == "hf-cache":
            commit = self.path.parent.name  # snapshots/<commit>/<file>
            return f"hf-cache:{tag.hub_id}@{commit}/{self.path.name}", sha256_file(self.path)
        return f"random-init:timm:{tag.model_name}", None


def resolve_weights(
    name: str, tag: TimmTag, checkpoint: str | os.PathLike | None, pretrained: bool
) -> TimmWeights:
    """The first weights source that applies: checkpoint, local hub cache, random init.

    Raises:
        WeightsNotFoundError: the checkpoint or the hub-cache file is missing.
    """
    if checkpoint is not None:
        return TimmWeights("checkpoint", checkpoint_file(checkpoint))
    if pretrained:
        return TimmWeights("hf-cache", hub_weights_file(tag, name))
    return TimmWeights("none", None)


def check_timm_available(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> TimmTag:
    """Fail now where `create_timm_model` would: timm missing, unknown name, weights missing,
    or kwargs the model does not take (built on the meta device: no memory, no weights)."""
    tag = resolve_tag(name)
    resolve_weights(name, tag, checkpoint, pretrained)
    if kwargs:
        import torch  # noqa: PLC0415 - torch is loaded by now; keeps the module's imports light

        try:
            with torch.device("meta"):
                _build(name, tag, None, kwargs, {})
        except (RuntimeError, NotImplementedError) as exc:  # an init that needs real data
            logger.info(
                "Cannot build %s on the meta device (%s): kwargs checked at build.", name, exc
            )
    return tag


def create_timm_model(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, TimmWeights]:
    """Build a `timm:` model on the CPU in eval mode, with weights from local files only.

    Args:
        name: "timm:<architecture>[.<tag>]", e.g. "timm:convnext_base.fb_in22k_ft_in1k".
        num_classes: output classes; default: the tag's. Hub weights of another class
            count keep everything but the classifier (timm's rule).
        checkpoint: a state-dict file, loaded strictly; wins over `pretrained`.
        pretrained: load the tag's weights from the local Hugging Face cache.
        kwargs: passed to `timm.create_model` (e.g. {"drop_path_rate": 0.05}).

    Returns:
        (model, where its weights came from).

    Raises:
        MissingExtraError, ModelNotFoundError, WeightsNotFoundError, WeightsCorruptError;
        ConfigError: kwargs the model does not take.
    """
    tag = resolve_tag(name)
    weights = resolve_weights(name, tag, checkpoint, pretrained)
    load: dict[str, Any] = {}
    if weights.kind == "hf-cache":
        load = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(weights.path)}}
    try:
        model = _build(name, tag, num_classes, kwargs or {}, load)
    except (RuntimeError, OSError, ValueError) as exc:  # timm's loader raises these
        if isinstance(exc, ConfigError) or weights.kind != "hf-cache":
            raise
        raise WeightsCorruptError(
            f"Cannot load the Hugging Face cache file {str(weights.path)} into timm model "
            f"{tag.model_name!r}: {str(exc)[:600]}; delete it and fetch `{tag.hub_id}` again."
        ) from exc
    if weights.kind == "checkpoint":
        load_weights_into(model, weights.path)
    return model.eval(), weights


def _build(
    name: str,
    tag: TimmTag,
    num_classes: int | None,
    kwargs: dict[str, Any],
    load: dict[str, Any],
) -> nn.Module:
    timm = import_timm(name)
    extra = dict(kwargs)
    if num_classes is not None:
        extra["num_classes"] = num_classes
    try:
        return timm.create_model(tag.model_name, **load, **extra)
    except TypeError as exc:
        if not kwargs:
            raise
        raise ConfigError(
            f"timm model {tag.model_name!r} ({name!r}) does not take the kwargs "
            f"{sorted(kwargs)}: {exc}. Check their names against the model's constructor."
        ) from exc


def data_config(model: nn.Module) -> dict[str, Any]:
    """The model's eval preprocessing from its pretrained config
    (`timm.data.resolve_model_data_config`): input_size (square side), mean, std,
    interpolation, crop_pct.

    Raises:
        ConfigError: a non-square input size (set input_size).
    """
    import timm.data  # noqa: PLC0415 - optional extra

    cfg = timm.data.resolve_model_data_config(model)
    _, height, width = cfg["input_size"]
    if height != width:
        raise ConfigError(f"timm model input size {height}x{width} is not square; set input_size.")
    if cfg.get("crop_mode", "center") != "center":
        logger.warning(
            "timm model crop_mode %r: the eval view here is a centre crop of crop_pct of the "
            "short side, not timm's %r transform.",
            cfg["crop_mode"],
            cfg["crop_mode"],
        )
    return {
        "input_size": int(height),
        "mean": tuple(float(m) for m in cfg["mean"]),
        "std": tuple(float(s) for s in cfg["std"]),
        "interpolation": str(cfg["interpolation"]),
        "crop_pct": float(cfg["crop_pct"]),
    }


def timm_version() -> str | None:
    """timm's version when it is imported in this process (for the manifest), else None."""
    module = sys.modules.get("timm")
    return getattr(module, "__version__", None) if module is not None else None
