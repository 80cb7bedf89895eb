"""Assembling a run for `fit`: device placement, seeding, loaders, the online teacher, a preflight.

Kept apart from train.py so `fit` reads as a table of contents.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pld_pipeline.cache_check import TargetPlan
from pld_pipeline.cached_dataset import (
    EpochViewSampler,
    IndexSampler,
    SampledViews,
    ShuffleSampler,
    StoredViews,
    ViewDataset,
    gather_targets,
)
from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.ddp import DistContext
from pld_pipeline.errors import ConfigError
from pld_pipeline.views import normalize_batch


@dataclass(frozen=True)
class Placement:
    """How student inputs reach the device: dtype policy, memory format, normalisation."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> normalised float32 on the device."""
        return normalize_batch(images, self.mean, self.std, self.device, self.channels_last)

    def autocast(self) -> AbstractContextManager:
        """Mixed precision as configured (a no-op context without AMP)."""
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )


def make_placement(config: TrainConfig, ctx: DistContext) -> Placement:
    """Resolve 'auto' device, AMP (bf16 on CUDA, none on CPU) and channels_last (CUDA)."""
    device = ctx.device(config.device)
    amp = config.amp if config.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    channels_last = config.channels_last
    if channels_last is None:
        channels_last = device.type == "cuda"
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return Placement(device, amp_dtype, channels_last, config.student.mean, config.student.std)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def split_batch(batch_size: int, num_train: int, world_size: int) -> tuple[int, int]:
    """(per-rank batch, optimizer steps per epoch) for a global batch over `world_size` ranks.

    The last partial batch of every epoch is dropped (no tiny batches for batch norm).

    Raises:
        ConfigError: the global batch does not split evenly, or no full batch fits.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"batch_size={batch_size} is the global batch and must divide evenly over "
            f"{world_size} ranks; use a multiple of {world_size}."
        )
    per_rank = batch_size // world_size
    steps = -(-num_train // world_size) // per_rank
    if steps < 1:
        raise ConfigError(
            f"batch_size={batch_size} is larger than the {num_train} training samples (the "
            "last partial batch is dropped, so no step would run); lower batch_size."
        )
    return per_rank, steps


def make_loader(
    dataset: ViewDataset,
    sampler: EpochViewSampler,
    batch_size: int,
    num_workers: int,
    seed: int,
    drop_last: bool,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose workers persist across epochs (views travel with the indices).

    Its own seeded generator keeps the global torch RNG (the model's) untouched, so a
    resumed run draws exactly what an uninterrupted one does.
    """
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


@dataclass
class Loaders:
    """The run's loaders; `train_sampler.set_epoch(epoch, views)` before each epoch."""

    train_sampler: EpochViewSampler
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader | None


def build_loaders(
    config: TrainConfig,
    train_images: ImageFolderDataset,
    val_images: ImageFolderDataset | None,
    train_index: Sequence[int],
    per_rank_batch: int,
    ctx: DistContext,
    teacher: Any = None,
) -> Loaders:
    """Train loader over `train_index` (shuffled per epoch, split over ranks) and val loader.

    With an online `teacher` the train items also carry the view at the teacher's size.
    Validation uses the eval view (centered crop of eval_crop_pct, no flip), split over ranks
    without padding.
    """
    s = config.student
    sampler = EpochViewSampler(ShuffleSampler(train_index, config.seed, ctx.rank, ctx.world_size))
    train_set = ViewDataset(
        train_images,
        s.image_size,
        s.interpolation,
        teacher.input_size if teacher is not None else None,
        teacher.interpolation if teacher is not None else "bilinear",
    )
    train = make_loader(
        train_set, sampler, per_rank_batch, config.num_workers, config.seed, drop_last=True
    )
    val = None
    if val_images is not None:
        val_sampler = EpochViewSampler(
            IndexSampler(range(ctx.rank, len(val_images), ctx.world_size))
        )
        val_sampler.set_epoch(0, SampledViews("eval", 0, 0, crop_pct=s.eval_crop_pct))
        val_set = ViewDataset(val_images, s.image_size, s.interpolation)
        val = make_loader(
            val_set, val_sampler, per_rank_batch, config.num_workers, config.seed, drop_last=False
        )
    return Loaders(sampler, train, val)


def train_views(
    config: TrainConfig, plan: TargetPlan, slab: Any, epoch: int
) -> StoredViews | SampledViews:
    """The views of a training epoch.

    A replay cache: the teacher's exact boxes and flips from the epoch's slab. An eval
    cache: the student's own random-resized crops, new every epoch (seeded by run seed and
    epoch), since the cache holds no random views to replay.
    """
    if plan.replay_cache:
        return StoredViews(slab.crop, slab.flip)
    s = config.student
    return SampledViews("replay", config.seed, epoch, s.random_scale, s.random_ratio)


def make_online_teacher(
    config: TrainConfig,
    plan: TargetPlan,
    manifest: Any,
    loss_params: dict[str, Any],
    placement: Placement,
) -> Any:
    """The live teacher of online mode, or None (the cached path never builds a teacher)."""
    if config.online_teacher is None:
        return None
    from pld_pipeline.online_teacher import OnlineTeacher  # noqa: PLC0415 - online mode only

    # A live teacher can give any temperature: the cached ones, T = 1 and the loss's.
    temperatures = set(manifest.temperatures) | {1.0}
    if loss_params.get("temperature") is not None:
        temperatures.add(float(loss_params["temperature"]))
    return OnlineTeacher(
        config.online_teacher,
        placement.device,
        plan.num_classes,
        plan.form,
        plan.k,
        sorted(temperatures),
        placement.amp_dtype,
        placement.channels_last,
        manifest.teacher.name,
    )


def preflight(
    criterion: Any, slab: Any, train_index: np.ndarray, plan: TargetPlan, device: torch.device
) -> None:
    """Run the loss once on two cached samples, so a loss/targets mismatch (e.g. the loss's
    default temperature not cached) fails before the first step with the loss's own error."""
    idx = np.asarray(train_index[:2])
    targets = gather_targets(slab, idx, plan.form, device)
    labels = torch.as_tensor(slab.label[idx - slab.start], dtype=torch.int64, device=device)
    criterion(torch.zeros(len(idx), plan.num_classes, device=device), targets, labels)
