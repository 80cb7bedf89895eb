"""Building a cache from a CacheConfig: plan, compute+write one shard, finalize, replay check.

These are the steps the `cache-teacher` flow runs as tasks; they are plain functions so a
notebook or a test can run a whole teacher pass without Prefect. Each step takes the
config (small, picklable) rather than live objects, so it can run in a thread, a Dask
worker process or another machine; the teacher and the dataset listing are built once
per process and reused across shards.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torchvision

import storage
from pld_pipeline import __version__, errors, label_order
from pld_pipeline.configs.cache import CacheConfig, TeacherConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.teacher.compute import compute_views
from pld_pipeline.teacher.models import LoadedTeacher, load_teacher
from pld_pipeline.teacher.options import PassOptions

logger = logging.getLogger(__name__)

# Errors a retry cannot fix: bad input, bad images, a NaN teacher, a manifest mismatch.
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (
    errors.PLDError,
    storage.CacheError,
    ValueError,
    TypeError,
)


@dataclass
class CachePlan:
    """What the pass will do: the cache's shape and the (view, shard) pairs still missing."""

    path: str
    num_samples: int
    num_views: int
    num_shards: int
    todo: list[tuple[int, int]]

    @property
    def num_done(self) -> int:
        return self.num_views * self.num_shards - len(self.todo)

    def shard_tasks(self) -> list[tuple[int, list[int]]]:
        """Group the missing pairs by shard: one task decodes a shard's images once for all
        of its missing views (decoding, not the forward, dominates small teachers)."""
        by_shard: dict[int, list[int]] = {}
        for view, shard in self.todo:
            by_shard.setdefault(shard, []).append(view)
        return sorted((shard, sorted(views)) for shard, views in by_shard.items())


@dataclass
class ShardOutcome:
    """One shard task's result, for logs and progress."""

    shard: int
    views: list[int]
    written: list[int]
    records: int
    seconds: float
    bad_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=4)
def _dataset(
    root: str, split: str | None, classes: str | tuple[str, ...] | None
) -> ImageFolderDataset:
    # Hashable arguments for the cache: a class list travels as a tuple.
    spec = list(classes) if isinstance(classes, tuple) else classes
    return label_order.load_dataset(root, split, spec)


@functools.lru_cache(maxsize=2)
def _teacher(teacher_json: str) -> LoadedTeacher:
    return load_teacher(TeacherConfig.model_validate_json(teacher_json))


def dataset_of(config: CacheConfig) -> ImageFolderDataset:
    """The config's dataset listing (labels from its `classes`), built once per process."""
    classes = config.classes
    return _dataset(
        config.dataset_root, config.split, tuple(classes) if isinstance(classes, list) else classes
    )


def teacher_of(config: CacheConfig) -> LoadedTeacher:
    """The config's teacher, built once per process (threads share it: inference only)."""
    return _teacher(config.teacher.model_dump_json())


def manifest_of(config: CacheConfig, producer: str = "") -> storage.Manifest:
    """The manifest this config's pass writes (teacher identity, views, format, dataset).

    Raises:
        errors.ConfigError: K larger than the teacher's classes.
        errors.ClassListError: labels that cannot be the teacher's class indices
            (`label_order.check_label_space`): the guard before anything is computed.
    """
    dataset = dataset_of(config)
    teacher = teacher_of(config)
    if config.format == "topk" and config.k > teacher.info.num_classes:
        raise errors.ConfigError(
            f"k={config.k} exceeds the teacher's {teacher.info.num_classes} classes; "
            f"use k <= {teacher.info.num_classes} or format='full'."
        )
    label_order.check_label_space(dataset, teacher.info.num_classes, config.classes)
    return storage.Manifest(
        teacher=teacher.info,
        views=config.view_info(teacher.preprocess.crop_pct),
        format=config.format,
        k=config.k if config.format == "topk" else teacher.info.num_classes,
        record_precision=config.record_precision,
        temperatures=tuple(float(t) for t in config.temperatures),
        dataset_fingerprint=dataset.fingerprint(),
        num_samples=len(dataset),
        shard_size=config.shard_size,
        producer=producer,
        library_versions=_producer_versions(),
        class_list=label_order.class_list_record(dataset, config.classes),
    )


def _producer_versions() -> dict[str, str]:
    """torch and torchvision versions (storage adds its own: numpy, zarr, ...)."""
    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "pld-pipeline": __version__}  # fmt: skip


def check_pass(config: CacheConfig) -> str:
    """Check a teacher pass: dataset and class list, teacher and weights, K, the output.

    Builds the manifest the pass will write (the dataset listing and the teacher are kept
    for the pass in this process, see `dataset_of` / `teacher_of`) and makes
    the checks `storage.create` makes at `output`, writing nothing.

    Returns:
        What the pass will do at `output`: "create", "resume" or "replace".

    Raises:
        DatasetError, ClassListError, ModelNotFoundError, WeightsNotFoundError,
        WeightsCorruptError, ConfigError (K above the teacher's classes), and
        storage.NotACacheError / ManifestMismatchError / DatasetMismatchError /
        CacheLocationError for an output that holds something else.
    """
    dataset = dataset_of(config)
    manifest = manifest_of(config)
    return storage.check_create(
        config.location(), manifest, dataset.keys, dataset.labels, overwrite=config.overwrite
    )


def prepare_cache(config: CacheConfig, producer: str = "") -> CachePlan:
    """Validate the config against the dataset and teacher, create or reopen the cache.

    Raises:
        storage.ManifestMismatchError: the path holds a cache of another teacher, view
            spec, format or dataset (nothing is touched; use overwrite to replace it).
        errors.ConfigError, errors.DatasetError: bad config or dataset.
    """
    dataset = dataset_of(config)
    manifest = manifest_of(config, producer)
    writer = storage.create(
        config.location(), manifest, dataset.keys, dataset.labels, overwrite=config.overwrite
    )
    return CachePlan(
        path=config.output,
        num_samples=manifest.num_samples,
        num_views=manifest.views.num_views,
        num_shards=writer.num_shards,
        todo=writer.missing(),
    )


def build_shard(config: CacheConfig, shard: int, views: list[int] | None = None) -> ShardOutcome:
    """Compute the teacher's records of one shard for its missing views and write them.

    Each view is written with its done bit last, so a kill leaves it to be redone; views
    already done (another worker, an earlier run) are skipped.
    """
    started = time.perf_counter()
    writer = storage.open_writer(config.location())
    manifest = writer.manifest
    wanted = range(manifest.views.num_views) if views is None else views
    todo = [v for v in wanted if not writer.is_done(v, shard)]
    start, stop = writer.shard_range(shard)
    outcome = ShardOutcome(shard=shard, views=list(wanted), written=[], records=0, seconds=0.0)
    if not todo:
        return outcome
    dataset = dataset_of(config)
    # The stored manifest is the spec: preprocessing, views and format as the cache says.
    options = PassOptions(
        device=worker_device(config.device),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        amp=config.amp,
        skip_bad_images=config.skip_bad_images,
    )
    records = compute_views(teacher_of(config).model, dataset, manifest, todo, start, stop, options)
    for view in todo:
        if writer.write_shard(view, shard, records[view]):
            outcome.written.append(view)
            outcome.records += stop - start
    # An undecodable image is bad in every view: its rows in any one view name it.
    bad = np.flatnonzero(records[todo[0]].get("bad", np.zeros(0, bool)))
    outcome.bad_keys = [dataset.keys[start + i] for i in bad]
    outcome.seconds = time.perf_counter() - started
    if outcome.bad_keys:
        logger.warning(
            "Shard %d: %d undecodable images recorded as bad: %s",
            shard,
            len(outcome.bad_keys),
            outcome.bad_keys[:5],
        )
    return outcome


def worker_device(device: str) -> str:
    """The GPU of this process: in a local Dask cluster, worker i takes cuda:(i mod count).

    Workers started by hand (`CUDA_VISIBLE_DEVICES=i dask worker ...`) see one GPU and keep
    "cuda"; an explicit "cuda:N" or "cpu" is never changed.
    """
    if device not in ("cuda", "auto") or not torch.cuda.is_available():
        return device
    try:
        from distributed import get_worker  # noqa: PLC0415 - only under Dask

        name = get_worker().name
    except (ImportError, ValueError):  # not in a Dask worker
        return device
    if isinstance(name, int) and torch.cuda.device_count() > 1:
        return f"cuda:{name % torch.cuda.device_count()}"
    return device
