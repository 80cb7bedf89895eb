"""Training configs: one student run (TrainConfig) and a grid of runs (SweepConfig, expand_grid).

Every field carries a description: it is the help text of the Prefect UI form and the CLI.
Values are checked here (types, ranges, cross-field rules); checks that need the cache or the
dataset (K, temperatures, class count, fingerprint) happen in `pld_pipeline.student.run.build.build_run` before
the first step.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from pld_pipeline.configs.base import (
    AMP_DESCRIPTION,
    DEFAULT_RATIO,
    DEFAULT_SCALE,
    Amp,
    StrictModel,
)
from pld_pipeline.configs.cache import ClassesSpec, TeacherConfig, check_classes_spec
from pld_pipeline.configs.loading import set_dotted
from pld_pipeline.configs.model_fields import (
    KWARGS_HELP,
    PRETRAINED_HELP,
    check_model_fields,
    check_timm_name,
)
from pld_pipeline.errors import ConfigError

# The same strings as pld_pipeline.losses.LOSS_NAMES (a test keeps them equal); spelled out
# here so reading a config does not import torch.
LossName = Literal["ce", "kd", "dist", "dkd", "pld"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StudentConfig(StrictModel):
    """The student network and how its inputs are made."""

    name: str = Field(
        "resnet18",
        description="torchvision model name (random init, e.g. 'resnet18'), "
        "`timm:<architecture>[.<tag>]` (e.g. 'timm:resnet50', needs `pip install "
        "\"pld-pipeline[timm]\"`) or 'module:callable' factory taking num_classes",
    )
    num_classes: int | None = Field(
        None, gt=0, description="output classes; None = the cache's num_classes (must match)"
    )
    checkpoint: str | None = Field(
        None,
        description="state-dict file the student starts from (weights_only=True, strict); "
        "None = random init (or, for a timm name with pretrained: true, the Hugging Face cache)",
    )
    pretrained: bool | None = Field(
        None, description=PRETRAINED_HELP.format(default="false (students start from scratch)")
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description=KWARGS_HELP)
    image_size: int = Field(224, gt=0, description="student input side in pixels")
    interpolation: Literal["bilinear", "bicubic", "nearest", "model"] = Field(
        "bilinear",
        description="resize filter used when replaying a crop at image_size; 'model' = the "
        "student's pretrained config's (timm names, factories that set pretrained_cfg)",
    )
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="per-channel input mean")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="per-channel input std")
    eval_crop_pct: Annotated[float, Field(gt=0, le=1)] | Literal["model"] = Field(
        0.875,
        description="validation: centered square crop of this share of the short side; "
        "'model' = the student's pretrained config's crop_pct",
    )
    random_scale: tuple[float, float] = Field(
        DEFAULT_SCALE,
        description="student's own random-resized-crop area range, used only with an eval cache",
    )
    random_ratio: tuple[float, float] = Field(
        DEFAULT_RATIO,
        description="student's own random-resized-crop aspect range, used only with an eval cache",
    )

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError(f"std must be > 0 per channel, got {v}")
        return v

    @field_validator("name")
    @classmethod
    def _timm_name(cls, value: str) -> str:
        return check_timm_name(value)

    @model_validator(mode="after")
    def _model_fields(self) -> StudentConfig:
        check_model_fields(self.name, self.checkpoint, self.pretrained, self.kwargs)
        return self


class OptimConfig(StrictModel):
    """Optimizer, learning-rate schedule (linear warmup then cosine), decay and clipping."""

    name: Literal["sgd", "adamw", "lamb"] = Field(
        "sgd", description="sgd (momentum, nesterov), adamw, or lamb (layer-wise trust ratio)"
    )
    lr: float = Field(0.1, description="peak learning rate after warmup (> 0)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="SGD Nesterov momentum (needs momentum > 0)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW/LAMB betas")
    eps: float = Field(1e-8, gt=0, description="AdamW/LAMB epsilon")
    weight_decay: float = Field(
        0.0, ge=0, description="decoupled (AdamW/LAMB) or L2 (SGD) weight decay"
    )
    decay_norm_and_bias: bool = Field(
        False, description="also decay 1-D parameters (biases, norm scales); off as in timm"
    )
    warmup_epochs: float = Field(
        0.0, ge=0, description="linear warmup length in epochs (fractions allowed)"
    )
    min_lr: float = Field(0.0, ge=0, description="learning rate at the end of the cosine")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the global gradient norm to this value; None = no clipping"
    )

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, v: float) -> float:
        if not v > 0:
            raise ValueError(f"lr must be > 0, got {v}; use a positive learning rate such as 0.1")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OptimConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0; set momentum (e.g. 0.9)")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} exceeds lr {self.lr}; lower min_lr")
        return self


class LossConfig(StrictModel):
    """The distillation loss, by name, with its temperature and extra parameters."""

    name: LossName = Field("pld", description="loss: ce, kd, dist, dkd or pld")
    temperature: float | None = Field(
        None,
        gt=0,
        description="loss temperature; None = the loss's default. Must be cached "
        "(manifest temperatures) for compact targets",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="other loss parameters, e.g. {ce_weight: 0.1} for kd, {label_smoothing: 0.1} for ce",
    )

    def make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `make_loss(self.name, **kwargs)`."""
        kwargs = dict(self.params)
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        return kwargs


class TrainConfig(StrictModel):
    """One student run: the cache and images it reads, the student, loss, optimizer and schedule."""

    cache: str | None = Field(
        description="path or fsspec URL of the teacher logit cache; null = plain supervised "
        "training with loss 'ce' and the student's own random crops (e.g. to train a teacher)"
    )
    storage_options: dict[str, Any] | None = Field(
        None,
        description="options for the cache URL's fsspec filesystem, passed through as given "
        "(e.g. {endpoint_url: ...}); default: the backend's environment (AWS_ENDPOINT_URL, ...)",
    )
    dataset_root: str = Field(
        description="training images (ImageNet layout) the cache was made from"
    )
    dataset_split: str | None = Field(
        None,
        description="split folder under dataset_root (e.g. 'train'); None = root holds classes",
    )
    classes: ClassesSpec = Field(
        None,
        description="class list mapping dataset_root's folders to labels, as in the cache "
        "config: a list, a text file (one name per line) or 'sorted-folders'; the labels must "
        "equal the cache's (checked). None = sorted folder names. Also maps val_root",
    )
    allow_label_mismatch: bool = Field(
        False,
        description="train from a cache whose teacher pass flagged its labels as probably not "
        "in the teacher's class order (refused by default)",
    )
    val_root: str | None = Field(
        None, description="validation images (ImageNet layout); None = no evaluation"
    )
    val_split: str | None = Field(None, description="split folder under val_root (e.g. 'val')")
    student: StudentConfig = Field(default_factory=StudentConfig, description="the student network")
    loss: LossConfig = Field(default_factory=LossConfig, description="the distillation loss")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimizer and schedule")
    epochs: int = Field(
        10,
        gt=0,
        description="epochs; an epoch decodes every training image once and trains "
        "views_per_image of its cached views (N * views_per_image samples)",
    )
    views_per_image: int = Field(
        1,
        gt=0,
        description="cached views trained per decoded image (m <= the cache's views); epoch e "
        "uses views (e*m + j) mod V, j < m. m = 1: view e mod V",
    )
    views_layout: Literal["spread", "same_batch"] = Field(
        "spread",
        description="where an image's m views train: 'spread' = one in each of m neighbouring "
        "batches (every batch holds distinct images), 'same_batch' = side by side in one batch",
    )
    batch_size: int = Field(
        128, gt=0, description="global batch size (split evenly over DDP ranks)"
    )
    k: int | None = Field(
        None,
        gt=0,
        description="teacher classes kept per sample (K' <= cached K); None = all cached",
    )
    target_form: Literal["compact", "dense"] = Field(
        "compact", description="compact top-K targets, or dense fp16 logits (full caches only)"
    )
    online_teacher: TeacherConfig | None = Field(
        None,
        description="run this teacher live on every batch instead of reading targets "
        "(speed comparison; same views)",
    )
    run_dir: str = Field(
        description="output folder: config.json, metrics.jsonl, checkpoints, result.json"
    )
    resume: bool = Field(False, description="continue from run_dir/checkpoint.pt when it exists")
    seed: int = Field(
        0, ge=0, description="seed of weights init, sample order and student augmentation"
    )
    deterministic: bool = Field(False, description="torch deterministic algorithms (slower on GPU)")
    device: str = Field(
        "auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ..."
    )
    amp: Amp = Field("auto", description=AMP_DESCRIPTION)
    channels_last: bool | None = Field(
        None, description="channels_last memory format; None = on for CUDA"
    )
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes decoding images")
    decode: Literal["cpu", "cpu-crop-on-cuda", "cuda"] = Field(
        "cpu",
        description="where training images are decoded and cut: 'cpu' (workers decode and "
        "crop), 'cpu-crop-on-cuda' (workers decode, exactly the teacher's pixels; the GPU "
        "crops and resizes, exactly as the CPU would; workers do one decode per image "
        "whatever views_per_image is) or 'cuda' (workers read file bytes; nvJPEG decodes, "
        "pixels a few levels off the CPU decoder's, and the GPU crops; files nvJPEG cannot "
        "read fall back to the CPU). Both GPU modes need a CUDA device",
    )
    checkpoint_every: int | None = Field(
        None,
        gt=0,
        description="also checkpoint every this many steps inside an epoch, so a resumed run "
        "continues mid-epoch; None = at the end of each epoch only",
    )
    eval_every: int = Field(
        1, gt=0, description="evaluate every this many epochs (and after the last)"
    )
    log_every: int = Field(50, gt=0, description="log training progress every this many steps")
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="Prefect flows: seconds the run may train (after it has its GPU slot) "
        "before it fails as timed out; None = no limit. Rerunning with resume=true continues "
        "from the last checkpoint",
    )
    gpu_limit: str | None = Field(
        "gpu",
        description="Prefect flows: global concurrency limit whose slot the run holds while "
        "it trains on CUDA (CPU runs take none); `pld serve` creates it. None = take no slot",
    )

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: ClassesSpec) -> ClassesSpec:
        return check_classes_spec(value)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.cache is None and (self.loss.name != "ce" or self.online_teacher is not None):
            raise ValueError(
                f"cache=null trains without a teacher, so loss must be 'ce' (got "
                f"{self.loss.name!r}) and online_teacher unset; give a cache for distillation"
            )
        if self.decode != "cpu" and not (self.device == "auto" or self.device.startswith("cuda")):
            raise ValueError(
                f"decode={self.decode!r} works on the GPU but device={self.device!r}; set "
                "device to 'cuda' (or 'auto') or decode='cpu'"
            )
        if self.target_form == "dense" and self.k is not None:
            raise ValueError(
                f"k={self.k} applies to compact targets; set target_form='compact' or k=null"
            )
        return self

    def cache_location(self):  # noqa: ANN201 (storage.Location | None, imported lazily)
        """Where the cache lives (`cache` and its fsspec `storage_options`); None without one."""
        if self.cache is None:
            return None
        from storage import Location  # noqa: PLC0415 - reading a config loads no zarr

        return Location(self.cache, dict(self.storage_options or {}))


class SweepConfig(StrictModel):
    """A grid of student runs over one cache: every combination of the grid's values."""

    base: TrainConfig = Field(
        description="the run every grid point starts from (its run_dir is replaced)"
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="dotted TrainConfig field -> values, e.g. {'loss.name': ['kd', 'pld'], "
        "'loss.temperature': [1.0, 4.0], 'seed': [0, 1], 'k': [5, 10]}",
    )
    sweep_dir: str = Field(description="runs go to `sweep_dir/<run name>`")
    max_parallel: int = Field(1, gt=0, description="student runs at once")
    # The expanded grid, made once by the validator and reused by expand_grid: (the
    # base, grid and sweep_dir it was made from, the runs).
    _points: tuple[str, list[tuple[str, TrainConfig]]] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _grid_valid(self) -> SweepConfig:
        for path, values in self.grid.items():
            if path in ("run_dir",):
                raise ValueError("grid may not vary run_dir; runs go to sweep_dir/<run name>")
            if not values:
                raise ValueError(f"grid[{path!r}] is empty; give at least one value")
            _check_path(path)
        expand_grid(self)  # every point must be a valid TrainConfig with a distinct name
        return self


def _check_path(path: str) -> None:
    """Raise ValueError unless `path` names a TrainConfig field (or loss.params.<name>)."""
    parts = path.split(".")
    model: type[BaseModel] | None = TrainConfig
    for i, part in enumerate(parts):
        if model is None:
            raise ValueError(
                f"grid key {path!r}: {'.'.join(parts[:i])!r} is a value, not a section"
            )
        if part not in model.model_fields:
            raise ValueError(
                f"grid key {path!r}: {part!r} is not a field of {model.__name__}; "
                f"valid: {sorted(model.model_fields)}"
            )
        if model is LossConfig and part == "params" and i == len(parts) - 2:
            return  # loss.params.<name>: make_loss checks the name when the run starts
        annotation = model.model_fields[part].annotation
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if is_model else None


_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return _UNSAFE.sub("-", text)


def expand_grid(sweep: SweepConfig) -> list[tuple[str, TrainConfig]]:
    """Every grid point as (run name, TrainConfig), in a stable order.

    Expanded once per SweepConfig (its validator does it) and reused while its base, grid
    and sweep_dir stay as they were.

    The product runs over the grid's keys in their given order; the run name is
    `key=value,key=value` (hydra style) with unsafe characters replaced by '-', so the same
    grid always names its runs the same way and a rerun skips finished runs. An empty grid
    gives one run named "base".

    Returns:
        list of (run_name, config) with config.run_dir = sweep_dir/run_name.

    Raises:
        ConfigError: a point is not a valid TrainConfig, or two points share a name.
    """
    made_from = sweep.model_dump_json(include={"base", "grid", "sweep_dir"})
    if sweep._points is None or sweep._points[0] != made_from:
        sweep._points = (made_from, _expand(sweep))
    return list(sweep._points[1])


def _expand(sweep: SweepConfig) -> list[tuple[str, TrainConfig]]:
    keys = list(sweep.grid)
    base = sweep.base.model_dump(mode="json")
    runs: list[tuple[str, TrainConfig]] = []
    seen: dict[str, tuple] = {}
    for values in itertools.product(*(sweep.grid[k] for k in keys)):
        name = (
            ",".join(f"{k}={_format_value(v)}" for k, v in zip(keys, values, strict=True)) or "base"
        )
        if name in seen:
            raise ConfigError(
                f"grid points {seen[name]} and {values} both get run name {name!r}; "
                "make the values distinct after replacing unsafe characters"
            )
        seen[name] = values
        data = json.loads(json.dumps(base))
        for key, value in zip(keys, values, strict=True):
            set_dotted(data, key.split("."), value)
        data["run_dir"] = str(Path(sweep.sweep_dir) / name)
        try:
            runs.append((name, TrainConfig.model_validate(data)))
        except ValueError as exc:
            raise ConfigError(f"grid point {name!r} is not a valid TrainConfig: {exc}") from exc
    return runs
