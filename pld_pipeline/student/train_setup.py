"""Assembling a run for `fit`: device placement, seeding, loaders, the online teacher, a preflight.

Kept apart from train.py so `fit` reads as a table of contents.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.device_policy import resolve_amp
from pld_pipeline.errors import ConfigError
from pld_pipeline.student.cache_check import TargetPlan
from pld_pipeline.student.cached_dataset import (
    EpochViewSampler,
    IndexSampler,
    SampledViews,
    ShuffleSampler,
    StoredViews,
    StudentViewDataset,
    collate_views,
    gather_targets,
)
from pld_pipeline.student.ddp import DistContext
from pld_pipeline.student.epoch_views import own_crop_ids
from pld_pipeline.views import normalize_batch

logger = logging.getLogger(__name__)


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
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )


def make_placement(config: TrainConfig, ctx: DistContext) -> Placement:
    """This rank's device ('auto' and 'cuda' -> its GPU), the AMP dtype of the policy both
    wings share (`pld_pipeline.device_policy`), and channels_last (default: on for CUDA)."""
    device = ctx.device(config.device)
    channels_last = config.channels_last
    if channels_last is None:
        channels_last = device.type == "cuda"
    amp_dtype = resolve_amp(config.amp, device)
    return Placement(device, amp_dtype, channels_last, config.student.mean, config.student.std)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def split_batch(
    batch_size: int, num_train: int, world_size: int, views_per_image: int = 1
) -> tuple[int, int]:
    """(per-rank batch, optimizer steps per epoch) for a global batch over `world_size` ranks.

    A batch holds per-rank batch / m images with m views each; an epoch is every training
    image once, i.e. num_train * m samples. The last partial batch of every epoch is
    dropped (no tiny batches for batch norm).

    Raises:
        ConfigError: the global batch does not split evenly over ranks and views, or no
            full batch fits.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"batch_size={batch_size} is the global batch and must divide evenly over "
            f"{world_size} ranks; use a multiple of {world_size}."
        )
    per_rank = batch_size // world_size
    if per_rank % views_per_image:
        raise ConfigError(
            f"batch_size={batch_size} gives {per_rank} samples per rank, which must be whole "
            f"images of views_per_image={views_per_image} views each; use a batch_size that "
            f"is a multiple of {world_size * views_per_image}."
        )
    steps = -(-num_train // world_size) // (per_rank // views_per_image)
    if steps < 1:
        raise ConfigError(
            f"batch_size={batch_size} ({batch_size // views_per_image} images of "
            f"{views_per_image} views per step) is larger than the {num_train} training "
            "images (the last partial batch is dropped, so no step would run); lower "
            "batch_size."
        )
    return per_rank, steps


def make_student_loader(
    dataset: StudentViewDataset,
    sampler: EpochViewSampler,
    batch_size: int,
    num_workers: int,
    seed: int,
    drop_last: bool,
    pin_memory: bool = False,
    collate_fn: Any = collate_views,
) -> torch.utils.data.DataLoader:
    """A DataLoader of `batch_size` images per batch whose workers persist across epochs
    (views travel with the indices).

    Its own seeded generator keeps the global torch RNG (the model's) untouched, so a
    resumed run draws exactly what an uninterrupted one does.
    """
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
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
    device: torch.device | None = None,
) -> Loaders:
    """Train loader over `train_index` (shuffled per epoch, split over ranks) and val loader.

    Whole images are split over ranks (each rank decodes its own images and trains all m
    views of each), so a train batch holds per_rank_batch / m images. With an online
    `teacher` the train items also carry the views at the teacher's size. With
    `decode: cuda` the train loader's workers only read file bytes (`gpu_decode`).
    Validation uses the eval view (centered crop of eval_crop_pct, no flip), split over
    ranks without padding, decoded on the CPU.
    """
    s = config.student
    cuda = device is not None and device.type == "cuda"
    m = config.views_per_image
    sampler = EpochViewSampler(ShuffleSampler(train_index, config.seed, ctx.rank, ctx.world_size))
    dataset_type, collate = StudentViewDataset, collate_views
    if config.decode == "cuda" and cuda:
        from pld_pipeline.student.gpu_decode import EncodedViewDataset, collate_encoded  # noqa: PLC0415

        dataset_type, collate = EncodedViewDataset, collate_encoded
    train_set = dataset_type(
        train_images,
        s.image_size,
        s.interpolation,
        teacher.input_size if teacher is not None else None,
        teacher.interpolation if teacher is not None else "bilinear",
    )
    train = make_student_loader(
        train_set, sampler, per_rank_batch // m, config.num_workers, config.seed,
        drop_last=True, pin_memory=cuda, collate_fn=collate,
    )  # fmt: skip
    val = None
    if val_images is not None:
        val_sampler = EpochViewSampler(
            IndexSampler(range(ctx.rank, len(val_images), ctx.world_size))
        )
        val_sampler.set_epoch(0, SampledViews("eval", 0, 0, crop_pct=s.eval_crop_pct))
        val_set = StudentViewDataset(val_images, s.image_size, s.interpolation)
        val = make_student_loader(
            val_set, val_sampler, per_rank_batch, config.num_workers, config.seed,
            drop_last=False, pin_memory=cuda,
        )  # fmt: skip
    return Loaders(sampler, train, val)


def make_device_batches(
    config: TrainConfig, placement: Placement, teacher: Any = None
) -> Callable[[Iterator], Iterator]:
    """What turns the train loader's batches into training batches: the identity, or with
    `decode: cuda` the GPU decoder (`gpu_decode.DeviceBatches`); when the run is not on a
    GPU after all (device 'auto' on a machine without one) the workers decode on the CPU,
    with a log line."""
    if config.decode != "cuda":
        return lambda batches: batches
    if placement.device.type != "cuda":
        logger.warning(
            "decode='cuda' but the run is on %s: the DataLoader workers decode on the CPU.",
            placement.device,
        )
        return lambda batches: batches
    from pld_pipeline.student.gpu_decode import DeviceBatches, GpuViewDecoder  # noqa: PLC0415

    s = config.student
    decoder = GpuViewDecoder(
        placement.device,
        s.image_size,
        s.interpolation,
        teacher.input_size if teacher is not None else None,
        teacher.interpolation if teacher is not None else "bilinear",
    )
    return DeviceBatches(decoder)


def train_views(
    config: TrainConfig, plan: TargetPlan, slabs: Sequence[Any] | None, epoch: int
) -> list[StoredViews | SampledViews]:
    """The views of a training epoch, one per view slot (m = views_per_image).

    A replay cache: the teacher's exact boxes and flips from each slot's slab. An eval
    cache or no cache: the student's own random-resized crops, new every epoch and slot
    (`epoch_views.own_crop_ids`, seeded by the run seed), since there are no random views
    to replay.
    """
    if plan.replay_cache:
        return [StoredViews(slab.crop, slab.flip) for slab in slabs]
    s = config.student
    return [
        SampledViews("replay", config.seed, v, s.random_scale, s.random_ratio)
        for v in own_crop_ids(epoch, config.views_per_image)
    ]


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
    from pld_pipeline.student.online_teacher import OnlineTeacher  # noqa: PLC0415 - online mode only

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
