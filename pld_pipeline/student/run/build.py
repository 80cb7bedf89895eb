"""One student run, assembled: `build_run(config) -> Run`, everything `fit`'s epoch loop needs.

`build_run` checks the cache against the dataset and config, builds the model, loss,
optimizer, schedule and loaders, and restores a checkpoint when resuming; every error a
cache, dataset or config can cause is raised here, before the first step. `fit` is
`build_run` plus the epoch loop; `bench/student.py` builds its runs the same way.
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
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.label_order import load_dataset
from pld_pipeline.losses import make_loss
from pld_pipeline.student.data.cached_dataset import gather_targets, good_indices
from pld_pipeline.student.data.epoch_views import EpochSlabs, NoSlabs
from pld_pipeline.student.data.loaders import (
    Loaders,
    build_loaders,
    make_device_batches,
    split_batch,
    train_views,
)
from pld_pipeline.student.data.target_fidelity import log_run_fidelity
from pld_pipeline.student.data.target_plan import (
    TargetPlan,
    check_cache,
    check_slab_values,
    supervised_plan,
)
from pld_pipeline.student.data.view_order import resume_offsets, spread_views
from pld_pipeline.student.run.checkpoint import load_checkpoint
from pld_pipeline.student.run.ddp import DistContext
from pld_pipeline.student.run.optim import make_optimizer, make_scheduler
from pld_pipeline.student.run.placement import Placement, make_placement
from pld_pipeline.student.run.run_dir import RunDir
from pld_pipeline.teacher.models import create_model

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
class Run:
    """A student run ready to train: placement, data, model and its optimisation, resume state.

    `history`, `best`, `start_epoch` and `in_epoch` are the resume state (empty for a new
    run); the epoch loop appends to `history` and updates `best`.
    """

    config: TrainConfig
    ctx: DistContext
    placement: Placement
    run_dir: RunDir
    reader: Any  # storage.CacheReader, or None without a cache
    plan: TargetPlan
    slabs: EpochSlabs | NoSlabs
    train_images: ImageFolderDataset
    val_images: ImageFolderDataset | None
    train_index: np.ndarray  # the good samples (the bad ones the pass recorded are skipped)
    per_rank_batch: int
    steps_per_epoch: int
    model: nn.Module  # unwrapped: what checkpoints hold and evaluation runs
    step: Step  # the DDP-wrapped model, loss, optimizer, schedule, scaler, online teacher
    loaders: Loaders
    device_batches: Callable[[Iterator], Iterator]
    start_epoch: int = 0
    in_epoch: dict[str, Any] | None = None  # where a mid-epoch checkpoint stopped
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"top1": None, "epoch": None})

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

    def train_batches(
        self, epoch: int, epoch_slabs: Sequence[Any] | None, steps_done: int
    ) -> Iterator:
        """The epoch's training batches on their way to the device, after `steps_done` steps
        (a mid-epoch resume); the loader's workers start here."""
        config, m = self.config, self.config.views_per_image
        skip, drop = resume_offsets(steps_done, m, config.views_layout)
        views = train_views(config, self.plan, epoch_slabs, epoch)
        self.loaders.train_sampler.set_epoch(epoch, views, skip=skip * (self.per_rank_batch // m))
        batches = self.device_batches(iter(self.loaders.train))
        if m > 1 and config.views_layout == "spread":
            batches = spread_views(batches, m, self.placement.device, drop_first=drop)
        return batches

    def save_state(self, epoch: int, is_best: bool, in_epoch: dict[str, Any] | None = None) -> None:
        """checkpoint.pt (and best.pt when `is_best`) after `epoch`, with the history so far."""
        self.run_dir.save_state(
            self.plan.manifest_hash, self.model, self.optimizer, self.scheduler, self.scaler,
            epoch, self.best, self.history, is_best, in_epoch=in_epoch,
        )  # fmt: skip


def build_run(config: TrainConfig, dist_context: DistContext | None = None) -> Run:
    """Assemble the run `config` describes, resumed from its checkpoint when it has one.

    Raises:
        storage.CacheError subclasses, ConfigError, TemperatureNotCachedError, LossInputError,
        ModelNotFoundError, CheckpointError: for a cache, dataset or config that does not
        fit the run.
    """
    ctx = dist_context or DistContext()
    place = make_placement(config, ctx)
    run_dir = RunDir(config.run_dir)
    resuming = run_dir.prepare(config, write=ctx.is_main)

    # Data: the cache, checked against the images and this config.
    from storage import open_cache  # noqa: PLC0415 - keeps `import pld_pipeline.student` light

    m = config.views_per_image
    train_images = load_dataset(config.dataset_root, config.dataset_split, config.classes)
    if config.cache is None:  # plain supervised training (loss ce), e.g. of a teacher
        reader, plan = None, supervised_plan(train_images, config)
        slabs, train_index = NoSlabs(m), np.arange(len(train_images))
    else:
        reader = open_cache(config.cache_location())
        plan = check_cache(reader, train_images, config)
        slabs = EpochSlabs(
            reader, plan.num_views, plan.load_k, m, plan.replay_cache,
            on_load=lambda slab: check_slab_values(slab, plan.num_classes),
        )  # fmt: skip
        train_index = good_indices(reader.bad_mask(), reader.num_samples)
    val_images = None
    if config.val_root:
        val_images = ImageFolderDataset(config.val_root, config.val_split, train_images.classes)
    batch, steps_per_epoch = split_batch(config.batch_size, len(train_index), ctx.world_size, m)

    # Model, criterion, (online teacher), optimizer, schedule.
    memory = torch.channels_last if place.channels_last else torch.contiguous_format
    with _INIT_LOCK:  # fits in threads of one process (a sweep) share torch's global RNG
        seed_everything(config.seed, config.deterministic)
        model = create_model(config.student.name, num_classes=plan.num_classes)
    model = model.to(place.device, memory_format=memory)
    criterion = make_loss(config.loss.name, **config.loss.make_kwargs())
    teacher = None
    if config.online_teacher is not None:
        from pld_pipeline.student.run.online_teacher import make_online_teacher  # noqa: PLC0415

        teacher = make_online_teacher(config, plan, reader.manifest, criterion.params, place)
    state = load_checkpoint(run_dir.checkpoint, place.device) if resuming else None
    start_epoch = int(state["epoch"]) + 1 if state is not None else 0
    in_epoch = state.get("in_epoch") if state is not None else None
    if teacher is None and reader is not None:
        preflight_loss(criterion, slabs.get(start_epoch), train_index, plan, place.device)
        log_run_fidelity(config, plan, slabs.get(start_epoch))
    optimizer = make_optimizer(model, config.optim)
    scheduler = make_scheduler(optimizer, config.optim, config.epochs, steps_per_epoch)
    scaler = place.grad_scaler()

    # Resume: weights, optimizer, schedule, scaler, RNG, history.
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"top1": None, "epoch": None}
    if state is not None:
        history, best = run_dir.restore_state(
            state, plan.manifest_hash, model, optimizer, scheduler, scaler
        )
    if ctx.is_main:
        run_dir.metrics.keep_epochs_before(start_epoch)
    trained = model
    if ctx.enabled:
        ids = [place.device] if place.device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    step = Step(trained, criterion, optimizer, scheduler, scaler, place,
                config.optim.clip_grad_norm, plan.form, teacher)  # fmt: skip
    loaders = build_loaders(
        config, train_images, val_images, train_index, batch, ctx, teacher, place.device
    )
    return Run(
        config, ctx, place, run_dir, reader, plan, slabs, train_images, val_images,
        train_index, batch, steps_per_epoch, model, step, loaders,
        make_device_batches(config, place, teacher), start_epoch, in_epoch, history, best,
    )  # fmt: skip


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
