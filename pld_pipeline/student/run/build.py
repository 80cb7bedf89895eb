"""One student run, assembled: `build_run(config) -> Run`, everything `fit`'s epoch loop needs.

`build_run` takes the run's checked inputs (`inputs.check_run`: images, cache, target plan),
builds the model, loss, optimizer, schedule and loaders, and restores a checkpoint when
resuming; every error a cache, dataset or config can cause is raised before the first
step. `fit` is `build_run` plus the epoch loop; `bench/student.py` builds its runs the
same way.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.losses import make_loss
from pld_pipeline.student.data.cached_dataset import gather_targets
from pld_pipeline.student.data.epoch_views import EpochSlabs, NoSlabs
from pld_pipeline.student.data.loaders import Loaders, RunData, build_data, train_views
from pld_pipeline.student.data.target_fidelity import log_run_fidelity
from pld_pipeline.student.data.target_plan import (
    TargetPlan,
)
from pld_pipeline.student.data.view_order import resume_offsets, spread_views
from pld_pipeline.student.run.checkpoint import load_checkpoint
from pld_pipeline.student.run.ddp import DistContext
from pld_pipeline.student.run.inputs import RunInputs, check_run, take
from pld_pipeline.student.run.optim import make_optimizer, make_scheduler
from pld_pipeline.student.run.placement import Placement, make_placement
from pld_pipeline.student.run.run_dir import RunDir
from pld_pipeline.student.run.student_model import create_student, with_model_inputs

logger = logging.getLogger(__name__)
_INIT_LOCK = threading.Lock()


@dataclass
class Step:
    """Everything one optimisation step needs, built once by `build_run`."""

    model: nn.Module  # DDP-wrapped when distributed
    criterion: Callable
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    placement: Placement
    clip_grad_norm: float | None
    form: str  # "compact" or "dense" targets
    teacher: Any = None  # OnlineTeacher in online mode


@dataclass
class Resume:
    """Where a run starts: its first epoch, where a mid-epoch checkpoint stopped, and what
    the epochs before recorded (empty for a new run)."""

    start_epoch: int = 0
    in_epoch: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"top1": None, "epoch": None})


@dataclass
class Run:
    """A student run ready to train, from named parts: its checked inputs, where it computes,
    its views' slabs, the model and its optimisation step, the loaders, and its resume
    state; the epoch loop appends to `history` and updates `best`."""

    config: TrainConfig
    inputs: RunInputs  # images, the open cache, the target plan, the good samples
    data: RunData  # view slabs, loaders, batches to the device, the batch split
    ctx: DistContext
    placement: Placement
    run_dir: RunDir
    model: nn.Module  # unwrapped: what checkpoints hold and evaluation runs
    step: Step  # the DDP-wrapped model, loss, optimizer, schedule, scaler, online teacher
    resume: Resume

    @property
    def plan(self) -> TargetPlan:
        return self.inputs.plan

    @property
    def slabs(self) -> EpochSlabs | NoSlabs:
        return self.data.slabs

    @property
    def loaders(self) -> Loaders:
        return self.data.loaders

    @property
    def per_rank_batch(self) -> int:
        return self.data.per_rank_batch

    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch

    @property
    def criterion(self) -> Callable:
        return self.step.criterion

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return self.step.scheduler

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.step.scaler

    @property
    def start_epoch(self) -> int:
        return self.resume.start_epoch

    @property
    def in_epoch(self) -> dict[str, Any] | None:
        return self.resume.in_epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.resume.history

    def train_batches(
        self, epoch: int, epoch_slabs: Sequence[Any] | None, steps_done: int
    ) -> Iterator:
        """The epoch's training batches on their way to the device, after `steps_done` steps
        (a mid-epoch resume); the loader's workers start here."""
        config, m = self.config, self.config.views_per_image
        skip, drop = resume_offsets(steps_done, m, config.views_layout)
        views = train_views(config, self.plan, epoch_slabs, epoch)
        self.loaders.train_sampler.set_epoch(epoch, views, skip=skip * (self.per_rank_batch // m))
        batches = self.data.device_batches(iter(self.loaders.train))
        if m > 1 and config.views_layout == "spread":
            batches = spread_views(batches, m, self.placement.device, drop_first=drop)
        return batches

    def save_state(self, epoch: int, is_best: bool, in_epoch: dict[str, Any] | None = None) -> None:
        """checkpoint.pt (and best.pt when `is_best`) after `epoch`, with the history so far."""
        self.run_dir.save_state(
            self.plan.manifest_hash, self.model, self.optimizer, self.scheduler, self.scaler,
            epoch, self.resume.best, self.history, is_best, in_epoch=in_epoch,
        )  # fmt: skip


def build_run(config: TrainConfig, dist_context: DistContext | None = None) -> Run:
    """Assemble the run `config` describes, resumed from its checkpoint when it has one.

    Its first half is `inputs.check_run` (or the inputs `pld train` checked and left for it):
    every error a cache, dataset or config can cause is raised before a model is built.

    Raises:
        PLDError: ConfigError, TemperatureNotCachedError, LossInputError, ModelNotFoundError,
            CheckpointError (and storage.CacheError subclasses): for a cache, dataset or
            config that does not fit the run.
    """
    ctx = dist_context or DistContext()
    inputs = take(config) or check_run(config)
    place = make_placement(config, ctx)
    run_dir = RunDir(config.run_dir)
    resuming = run_dir.prepare(config, write=ctx.is_main)
    model, criterion, teacher = _model_and_loss(config, inputs, place)
    config = with_model_inputs(config, model)  # eval_crop_pct / interpolation: model
    state = load_checkpoint(run_dir.checkpoint, place.device) if resuming else None
    resume = Resume()
    if state is not None:
        resume.start_epoch, resume.in_epoch = int(state["epoch"]) + 1, state.get("in_epoch")
    data = build_data(config, inputs.plan, inputs.reader, inputs.train_images, inputs.val_images,
                      inputs.train_index, ctx, place.device, teacher, inputs.first_slabs)  # fmt: skip
    if teacher is None and inputs.reader is not None:
        preflight_loss(criterion, data.slabs.get(resume.start_epoch), inputs.train_index,
                       inputs.plan, place.device)  # fmt: skip
        log_run_fidelity(config, inputs.plan, data.slabs.get(resume.start_epoch))
    optimizer = make_optimizer(model, config.optim)
    scheduler = make_scheduler(optimizer, config.optim, config.epochs, data.steps_per_epoch)
    scaler = place.grad_scaler()
    if state is not None:
        resume.history, resume.best = run_dir.restore_state(
            state, inputs.plan.manifest_hash, model, optimizer, scheduler, scaler
        )
    if ctx.is_main:
        run_dir.metrics.keep_epochs_before(resume.start_epoch)
    trained = model
    if ctx.enabled:
        ids = [place.device] if place.device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    step = Step(trained, criterion, optimizer, scheduler, scaler, place,
                config.optim.clip_grad_norm, inputs.plan.form, teacher)  # fmt: skip
    return Run(config=config, inputs=inputs, data=data, ctx=ctx, placement=place,
               run_dir=run_dir, model=model, step=step, resume=resume)  # fmt: skip


def _model_and_loss(
    config: TrainConfig, inputs: RunInputs, place: Placement
) -> tuple[nn.Module, Callable, Any]:
    """The student on its device, the loss, and the online teacher (None offline)."""
    memory = torch.channels_last if place.channels_last else torch.contiguous_format
    with _INIT_LOCK:  # fits in threads of one process (a sweep) share torch's global RNG
        seed_everything(config.seed, config.deterministic)
        model = create_student(config.student, inputs.plan.num_classes)
    model = model.to(place.device, memory_format=memory)
    criterion = make_loss(config.loss.name, **config.loss.make_kwargs())
    teacher = None
    if config.online_teacher is not None:
        from pld_pipeline.student.run.online_teacher import make_online_teacher  # noqa: PLC0415

        teacher = make_online_teacher(
            config, inputs.plan, inputs.reader.manifest, criterion.params, place
        )
    return model, criterion, teacher


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def preflight_loss(
    criterion: Any,
    slabs: Sequence[Any],
    train_index: np.ndarray,
    plan: TargetPlan,
    device: torch.device,
) -> None:
    """Run the loss once, with its value checks, on two cached samples of every slot, so a
    loss/targets mismatch (e.g. the loss's default temperature not cached) fails before the
    first step with the loss's own error. (The steps then skip the value checks; the slabs'
    values are checked as they load, `cache_check.check_slab_values`.)"""
    idx = np.repeat(np.asarray(train_index[:2]), len(slabs))
    slot = np.tile(np.arange(len(slabs)), min(2, len(train_index)))
    targets = gather_targets(list(slabs), idx, plan.form, device, slot=slot)
    first = slabs[0]
    labels = torch.as_tensor(first.label[idx - first.start], dtype=torch.int64, device=device)
    criterion(torch.zeros(len(idx), plan.num_classes, device=device), targets, labels)
