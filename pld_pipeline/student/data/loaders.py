"""The student's data path, assembled: batch split over ranks and views, each epoch's view
slabs, the loaders, each epoch's views, and what moves batches onto the device.

`build_data` is the one call a run makes for all of it (`build_run`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import ConfigError
from pld_pipeline.student.data.cached_dataset import (
    EpochViewSampler,
    IndexSampler,
    SampledViews,
    ShuffleSampler,
    StoredViews,
    StudentViewDataset,
    collate_views,
)
from pld_pipeline.student.data.epoch_views import EpochSlabs, NoSlabs, own_crop_ids
from pld_pipeline.student.data.target_plan import TargetPlan, check_slab_values

logger = logging.getLogger(__name__)


class Ranks(Protocol):
    """This process's place among a run's processes (`run.ddp.DistContext` is one)."""

    rank: int
    world_size: int


@dataclass
class RunData:
    """A run's data path: each epoch's cached views in memory, the loaders, what moves their
    batches to the device, and the batch split."""

    slabs: EpochSlabs | NoSlabs
    loaders: Loaders
    device_batches: Callable[[Iterator], Iterator]
    per_rank_batch: int
    steps_per_epoch: int


def build_data(
    config: TrainConfig,
    plan: TargetPlan,
    reader: Any,
    train_images: ImageFolderDataset,
    val_images: ImageFolderDataset | None,
    train_index: Sequence[int],
    ranks: Ranks,
    device: torch.device,
    teacher: Any = None,
    first_slabs: dict[int, Any] | None = None,
) -> RunData:
    """The data path of a run whose inputs were checked (`run.inputs.check_run`).

    Args:
        reader: the open cache (storage.CacheReader), or None without one.
        train_index: the training samples (the bad ones the pass recorded left out).
        teacher: the online teacher, or None.
        first_slabs: views already being read ({view: Future of its slab}).
    """
    m = config.views_per_image
    if reader is None:  # plain supervised training (loss ce)
        slabs: EpochSlabs | NoSlabs = NoSlabs(m)
    else:
        slabs = EpochSlabs(
            reader, plan.num_views, plan.load_k, m, plan.replay_cache,
            on_load=lambda slab: check_slab_values(slab, plan.num_classes), pending=first_slabs,
        )  # fmt: skip
    batch, steps = split_batch(config.batch_size, len(train_index), ranks.world_size, m)
    loaders = build_loaders(
        config, train_images, val_images, train_index, batch, ranks, teacher, device
    )
    return RunData(slabs, loaders, make_device_batches(config, device, teacher), batch, steps)


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
    ctx: Ranks,
    teacher: Any = None,
    device: torch.device | None = None,
) -> Loaders:
    """Train loader over `train_index` (shuffled per epoch, split over ranks) and val loader.

    Whole images are split over ranks (each rank decodes its own images and trains all m
    views of each), so a train batch holds per_rank_batch / m images. With an online
    `teacher` the train items also carry the views at the teacher's size. With
    `decode: cuda` the train loader's workers only read file bytes, with
    `cpu-crop-on-cuda` they only decode (`gpu_decode`).
    Validation uses the eval view (centered crop of eval_crop_pct, no flip), split over
    ranks without padding, decoded on the CPU.
    """
    s = config.student
    cuda = device is not None and device.type == "cuda"
    m = config.views_per_image
    sampler = EpochViewSampler(ShuffleSampler(train_index, config.seed, ctx.rank, ctx.world_size))
    dataset_type, collate = StudentViewDataset, collate_views
    if config.decode != "cpu" and cuda:
        from pld_pipeline.student.data import gpu_decode  # noqa: PLC0415

        dataset_type = {"cuda": gpu_decode.EncodedViewDataset,
                        "cpu-crop-on-cuda": gpu_decode.DecodedViewDataset}[config.decode]  # fmt: skip
        collate = gpu_decode.collate_encoded
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
    config: TrainConfig, device: torch.device, teacher: Any = None
) -> Callable[[Iterator], Iterator]:
    """What turns the train loader's batches into training batches: the identity, or with
    `decode: cuda` or `cpu-crop-on-cuda` the GPU decoder (`gpu_decode.DeviceBatches`);
    when the run is not on a GPU after all (device 'auto' on a machine without one) the
    workers decode and crop on the CPU, with a log line."""
    if config.decode == "cpu":
        return lambda batches: batches
    if device.type != "cuda":
        logger.warning(
            "decode=%r but the run is on %s: the DataLoader workers decode and crop on the CPU.",
            config.decode, device,
        )  # fmt: skip
        return lambda batches: batches
    from pld_pipeline.student.data.gpu_decode import DeviceBatches, GpuViewDecoder  # noqa: PLC0415

    s = config.student
    decoder = GpuViewDecoder(
        device,
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
