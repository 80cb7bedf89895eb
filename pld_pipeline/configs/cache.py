"""The teacher-pass configuration: teacher, views, cache format and how to run (flow form, CLI help)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pld_pipeline.configs.base import (
    AMP_DESCRIPTION,
    DEFAULT_RATIO,
    DEFAULT_SCALE,
    Amp,
    StrictModel,
)
from pld_pipeline.configs.model_fields import (
    KWARGS_HELP,
    PRETRAINED_HELP,
    TIMM_PREFIX,
    check_model_fields,
    check_timm_name,
)

Interpolation = Literal["bilinear", "bicubic", "nearest", "nearest-exact"]
RGB = tuple[float, float, float]
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
SORTED_FOLDERS = "sorted-folders"
# A class list: names in the teacher's index order, a text file of them, or SORTED_FOLDERS.
ClassesSpec = list[str] | str | None
CLASSES_HELP = (
    "The teacher's class list in its index order: label = position in it. A list of "
    "class-folder names, or the path of a text file with one name per line (e.g. the 1000 "
    "ImageNet wnids, see 'Class lists' in docs/imagenet.md). Folders missing from the dataset are "
    "fine; folders not in the list are an error. 'sorted-folders': labels are the positions "
    "of the sorted folder names. None: the same, but refused when the dataset has fewer "
    "folders than the teacher has classes (a subset needs the list)."
)


def check_class_names(names: list[str], where: str = "classes") -> list[str]:
    """Raise ValueError unless `names` is a non-empty list of distinct folder names."""
    if not names:
        raise ValueError(f"{where} is empty; give the teacher's class names in index order")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(
                f"{where}[{i}] = {name!r} is not a folder name (empty, or with surrounding spaces)"
            )
        if "/" in name or "\n" in name:
            raise ValueError(f"{where}[{i}] = {name!r} holds '/' or a newline; give folder names")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"{where} names {name!r} twice (positions {seen[name]} and {i}); each class "
                "must appear once, at its teacher index"
            )
        seen[name] = i
    return names


def check_classes_spec(value: ClassesSpec) -> ClassesSpec:
    """Validate a `classes` field: a name list, 'sorted-folders', a file path, or None."""
    if isinstance(value, list):
        return check_class_names(value)
    if isinstance(value, str) and not value.strip():
        raise ValueError("classes is an empty string; give a list, a file path or 'sorted-folders'")
    return value


class TeacherConfig(StrictModel):
    """Which teacher to run and how it sees images (unset values come from its weights)."""

    name: str = Field(
        description="torchvision model name (e.g. 'resnet50'), `timm:<architecture>[.<tag>]` "
        "(e.g. 'timm:convnext_base.fb_in22k_ft_in1k', needs `pip install "
        "\"pld-pipeline[timm]\"`) or 'package.module:callable' returning an nn.Module (e.g. "
        "'pld_pipeline.teacher.zoo:efficientnet_lite0')."
    )
    weights: str | None = Field(
        None,
        description="torchvision weights enum, e.g. 'ResNet50_Weights.IMAGENET1K_V2', read from "
        "$TORCH_HOME/hub/checkpoints (never downloaded). torchvision names only.",
    )
    checkpoint: str | None = Field(
        None,
        description="Path of a state-dict file loaded into the model (weights_only=True); for a "
        "timm name it wins over the Hugging Face cache.",
    )
    pretrained: bool | None = Field(
        None, description=PRETRAINED_HELP.format(default="true (a teacher is pretrained).")
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description=KWARGS_HELP + ".")
    num_classes: int | None = Field(
        None, ge=1, description="Output classes; default: from the weights or the model."
    )
    input_size: int | None = Field(
        None, ge=1, description="Teacher input side in pixels; default: the weights' eval crop."
    )
    mean: RGB | None = Field(
        None, description="Per-channel mean on 0..1 pixels; default: the weights'."
    )
    std: RGB | None = Field(
        None, description="Per-channel std on 0..1 pixels; default: the weights'."
    )
    interpolation: Interpolation | None = Field(
        None, description="Resize interpolation; default: the weights' eval transform's."
    )
    crop_pct: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Eval view: center square of side crop_pct * short side; default: the "
        "weights' crop/resize ratio (0.875 when unknown).",
    )

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: RGB | None) -> RGB | None:
        if value is not None and any(s <= 0 for s in value):
            raise ValueError(f"std must be positive per channel, got {value}")
        return value

    @field_validator("name")
    @classmethod
    def _timm_name(cls, value: str) -> str:
        return check_timm_name(value)

    @model_validator(mode="after")
    def _one_weights_source(self) -> TeacherConfig:
        if self.weights and self.checkpoint:
            raise ValueError("give weights or checkpoint, not both")
        if self.weights and ":" in self.name:
            raise ValueError(
                f"weights={self.weights!r} is a torchvision enum but name={self.name!r} is "
                + (
                    "a timm name; use checkpoint or pretrained"
                    if self.name.startswith(TIMM_PREFIX)
                    else "a factory; load weights in the factory or use checkpoint"
                )
            )
        check_model_fields(self.name, self.checkpoint, self.pretrained, self.kwargs)
        return self


class ViewConfig(StrictModel):
    """Which views of each image the teacher sees (replayed later by students)."""

    mode: Literal["eval", "replay"] = Field(
        "eval",
        description="'eval': one view, the teacher's resize + center crop. 'replay': num_views "
        "RandomResizedCrop + flip views, each drawn from (seed, view, sample) alone.",
    )
    num_views: int = Field(1, ge=1, description="Views per sample (1 in eval mode).")
    seed: int = Field(0, ge=0, description="Seed of every view's random draws.")
    scale: tuple[float, float] = Field(
        DEFAULT_SCALE,
        description="RandomResizedCrop area fraction range (min, max), within (0, 1].",
    )
    ratio: tuple[float, float] = Field(
        DEFAULT_RATIO, description="RandomResizedCrop aspect ratio range (min, max)."
    )

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {value}")
        return value

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {value}")
        return value

    @model_validator(mode="after")
    def _eval_has_one_view(self) -> ViewConfig:
        if self.mode == "eval" and self.num_views != 1:
            raise ValueError(
                f"eval mode has exactly one view, got num_views={self.num_views}; use "
                "mode='replay' for several"
            )
        return self


class CacheConfig(StrictModel):
    """One teacher pass over an image folder into a Zarr logit cache."""

    dataset_root: str = Field(description="ImageNet-layout folder: `root/<class>/<image>`.")
    split: str | None = Field(
        None,
        description="Sub-folder of dataset_root to read (torchvision ImageNet: 'train', 'val').",
    )
    classes: ClassesSpec = Field(None, description=CLASSES_HELP)
    teacher: TeacherConfig = Field(description="The teacher model.")
    views: ViewConfig = Field(default_factory=ViewConfig, description="Views to cache.")
    format: Literal["topk", "full"] = Field(
        "topk", description="'topk': K classes' log-probs per view; 'full': all C logits (fp16)."
    )
    k: int = Field(10, ge=1, description="Classes kept per view in the topk format.")
    record_precision: Literal["fp16", "q8"] = Field(
        "fp16",
        description="How the topk format stores log-probs: 'fp16', or 'q8' (8 bits per class "
        "with an exact top-1 and the order kept; crop boxes as uint16; blosc-zstd): 29 bytes "
        "per top-10 record of a real ImageNet teacher against fp16's 46, slower to read at "
        "large K; see docs/choosing-k-t-precision.md for what it costs each loss.",
    )
    temperatures: tuple[float, ...] = Field(
        (1.0,),
        description="Temperatures T at which logsumexp(logits / T) is stored; must include 1.0.",
    )
    shard_size: int = Field(
        8192,
        ge=1,
        description="Samples per shard (one task, one chunk along N); 8192 keeps whole-view "
        "reads above 1 M records/s (bench/storage.py).",
    )
    output: str = Field(
        description="Cache location: a local path or an fsspec URL (s3://bucket/caches/r152 "
        "with the [s3] extra; endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). "
        "In the flow, '{date}' becomes the run's scheduled date (YYYY-MM-DD, UTC): one new "
        "cache per scheduled pass."
    )
    storage_options: dict[str, Any] | None = Field(
        None,
        description="Options for output's fsspec filesystem, passed through as given, e.g. "
        "{endpoint_url: 'http://minio:9000', anon: false}; default: the backend's environment.",
    )
    batch_size: int = Field(64, ge=1, description="Images per teacher forward.")
    num_workers: int = Field(4, ge=0, description="DataLoader processes decoding images per task.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    amp: Amp = Field("auto", description=AMP_DESCRIPTION)
    skip_bad_images: bool = Field(
        False,
        description="Record undecodable images as bad (listed in the manifest, excluded from "
        "training) instead of stopping with their path.",
    )
    overwrite: bool = Field(False, description="Replace an existing cache at output.")
    replay_check_samples: int = Field(
        16, ge=0, description="Cached samples recomputed by the teacher after the pass (0: skip)."
    )
    replay_check_tolerance: float = Field(
        0.05,
        gt=0,
        description="Largest |cached - recomputed| top-K log-prob (nats) the replay check accepts.",
    )
    min_label_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Least teacher top-1 against the labels over the pass. Below it the cache "
        "is finished but flagged as a label mismatch and the pass fails (labels probably not in "
        "the teacher's class order). None: 5x chance (5/C; for C < 9 halfway between chance "
        "and 1). 0: never flag.",
    )
    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="'threads' in this process, or 'dask' (local or existing cluster)."
    )
    dask_workers: int = Field(2, ge=1, description="Local Dask cluster size (one per GPU).")
    dask_address: str | None = Field(
        None,
        description="Existing Dask scheduler, e.g. tcp://host:8786 (implies task_runner=dask).",
    )
    max_workers: int = Field(1, ge=1, description="Concurrent shard tasks with the thread runner.")
    lost_workers_timeout: float = Field(
        300.0,
        gt=0,
        description="Dask only: seconds the pass waits with no usable worker (all lost, none "
        "joined, or the scheduler gone) before it fails; written shards are kept for a rerun.",
    )
    gpus_per_task: int = Field(
        0,
        ge=0,
        description="Dask only: each shard task needs this many 'GPU' worker resources, so it "
        "runs where a GPU is free (start workers with --resources GPU=1; a local cluster "
        "gives each worker 1). 0: no restriction.",
    )

    shard_timeout_s: float | None = Field(
        21600.0,
        gt=0,
        description="Seconds one shard task may compute (after it has its GPU slot) before it "
        "fails as timed out; generous by default (6 h) so only a stalled task hits it. "
        "None: no limit. Shards already written stay done, so a rerun resumes.",
    )
    gpu_limit: str | None = Field(
        "gpu",
        description="Prefect global concurrency limit whose slot every shard task and the "
        "replay check hold while they use CUDA (CPU work takes none); `pld serve` creates "
        "it. None: take no slot.",
    )

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not t > 0 for t in value):
            raise ValueError(f"temperatures must be positive, got {list(value)}")
        if 1.0 not in value:
            raise ValueError(
                f"temperatures must include 1.0 (top-K log-probs are stored at T=1), got {list(value)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"temperatures must be distinct, got {list(value)}")
        return value

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: ClassesSpec) -> ClassesSpec:
        return check_classes_spec(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CacheConfig:
        classes = self.teacher.num_classes
        if self.format == "topk" and classes is not None and self.k > classes:
            raise ValueError(f"k={self.k} exceeds the teacher's {classes} classes")
        if self.format == "full" and self.record_precision != "fp16":
            raise ValueError(
                f"record_precision={self.record_precision!r} applies to format 'topk'; full "
                "logits are stored in fp16 (set record_precision='fp16' or format='topk')"
            )
        if self.dask_address and self.task_runner != "dask":
            raise ValueError("dask_address needs task_runner='dask'")
        return self

    def location(self):  # noqa: ANN201 (storage.Location, imported lazily)
        """Where the cache lives: `output` and its fsspec `storage_options`."""
        from storage import Location  # noqa: PLC0415 - reading a config loads no zarr

        return Location(self.output, dict(self.storage_options or {}))

    def view_info(self, crop_pct: float):  # noqa: ANN201 (storage.ViewInfo, imported lazily)
        """The manifest's view entry (crop_pct: the teacher's resolved eval crop fraction)."""
        from storage import ViewInfo  # noqa: PLC0415 - reading a config loads no zarr

        return ViewInfo(
            mode=self.views.mode,
            num_views=self.views.num_views,
            seed=self.views.seed,
            scale=tuple(self.views.scale),
            ratio=tuple(self.views.ratio),
            crop_pct=float(crop_pct),
        )


DATE = "{date}"


def resolve_output(output: str, scheduled: dt.datetime | None) -> str:
    """`output` with `{date}` replaced by the scheduled date (YYYY-MM-DD, UTC); else as is.

    A weekly `cache-teacher` deployment has fixed parameters, yet each week's pass must
    write a new cache (last week's stays in use, and a changed dataset could not resume
    into it): `s3://caches/weekly-{date}` becomes `s3://caches/weekly-2026-11-29`, the date
    the flow run was *scheduled* for, so a retry of the same flow run resumes into the
    same cache and a late start does not change the name.
    """
    if DATE not in output:
        return output
    when = scheduled or dt.datetime.now(dt.UTC)
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return output.replace(DATE, when.strftime("%Y-%m-%d"))
