"""Building a cache from a CacheConfig: plan, compute+write one shard, finalize, replay check.

These are the steps the `cache-teacher` flow runs as tasks; they are plain functions so a
notebook or a test can run a whole teacher pass without Prefect. Each step takes the
config (small, picklable) rather than live objects, so it can run in a thread, a Dask
worker process or another machine; the teacher and the dataset listing are built once
per process and reused across shards.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import OrderedDict
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
from pld_pipeline.teacher.timm_models import timm_version

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


@functools.lru_cache(maxsize=2)
def _teacher(teacher_json: str) -> LoadedTeacher:
    return load_teacher(TeacherConfig.model_validate_json(teacher_json))


def teacher_of(config: CacheConfig) -> LoadedTeacher:
    """The config's teacher, built once per process (threads share it: inference only)."""
    return _teacher(config.teacher.model_dump_json())


def manifest_of(
    config: CacheConfig, images: ImageFolderDataset, producer: str = ""
) -> storage.Manifest:
    """The manifest this config's pass writes over `images` (teacher identity, views,
    format, dataset).

    Raises:
        errors.ConfigError: K larger than the teacher's classes.
        errors.ClassListError: labels that cannot be the teacher's class indices
            (`label_order.check_label_space`): the guard before anything is computed.
    """
    teacher = teacher_of(config)
    if config.format == "topk" and config.k > teacher.info.num_classes:
        raise errors.ConfigError(
            f"k={config.k} exceeds the teacher's {teacher.info.num_classes} classes; "
            f"use k <= {teacher.info.num_classes} or format='full'."
        )
    label_order.check_label_space(images, teacher.info.num_classes, config.classes)
    return storage.Manifest(
        teacher=teacher.info,
        views=config.view_info(teacher.preprocess.crop_pct),
        format=config.format,
        k=config.k if config.format == "topk" else teacher.info.num_classes,
        record_precision=config.record_precision,
        temperatures=tuple(float(t) for t in config.temperatures),
        dataset_fingerprint=images.fingerprint(),
        num_samples=len(images),
        shard_size=config.shard_size,
        producer=producer,
        library_versions=_producer_versions(),
        class_list=label_order.class_list_record(images, config.classes),
    )


def _producer_versions() -> dict[str, str]:
    """torch, torchvision (and timm, when a timm teacher loaded it) versions (storage adds
    its own: numpy, zarr, ...)."""
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "pld-pipeline": __version__}  # fmt: skip
    if timm_version() is not None:
        versions["timm"] = timm_version()
    return versions


@dataclass
class PassInputs:
    """A pass's checked inputs: the dataset listing and the manifest the pass writes."""

    config: CacheConfig
    images: ImageFolderDataset
    manifest: storage.Manifest


def check_pass(config: CacheConfig) -> PassInputs:
    """Check a teacher pass and return its inputs: the first half of `prepare_cache`.

    Lists the dataset, loads the teacher, builds the manifest the pass will write and
    makes the checks `storage.create` makes at `output`, writing nothing.

    Raises:
        DatasetError, ClassListError, ModelNotFoundError, WeightsNotFoundError,
        WeightsCorruptError, ConfigError (K above the teacher's classes), and
        storage.NotACacheError / ManifestMismatchError / DatasetMismatchError /
        CacheLocationError for an output that holds something else.
    """
    images = label_order.load_dataset(config.dataset_root, config.split, config.classes)
    manifest = manifest_of(config, images)
    storage.check_create(
        config.location(), manifest, images.keys, images.labels, overwrite=config.overwrite
    )
    return PassInputs(config, images, manifest)


# Checked inputs waiting for the pass this process starts next (`pld cache` checks before it
# starts the flow: a flow parameter is a config, not a listing), and the listings of the
# caches this process writes, by (cache, dataset fingerprint, creation time).
_waiting: dict[str, PassInputs] = {}
_listings: OrderedDict[tuple[str, str, str], ImageFolderDataset] = OrderedDict()
_lock = threading.Lock()


def keep(inputs: PassInputs) -> None:
    """Leave checked inputs for the pass of the same config in this process (`prepare_cache`)."""
    with _lock:
        _waiting[inputs.config.model_dump_json()] = inputs


def prepare_cache(config: CacheConfig, producer: str = "") -> CachePlan:
    """Create or reopen the cache of a checked pass (`check_pass`, or the inputs `pld cache`
    checked and left with `keep`) and list the (view, shard) still to do.

    Raises:
        storage.ManifestMismatchError: the path holds a cache of another teacher, view
            spec, format or dataset (nothing is touched; use overwrite to replace it).
        errors.ConfigError, errors.DatasetError: bad config or dataset.
    """
    with _lock:
        inputs = _waiting.pop(config.model_dump_json(), None)
    inputs = inputs or check_pass(config)
    manifest = dataclasses.replace(inputs.manifest, producer=producer)
    writer = storage.create(
        config.location(), manifest, inputs.images.keys, inputs.images.labels,
        overwrite=config.overwrite,
    )  # fmt: skip
    _remember(config, writer.manifest, inputs.images)
    return CachePlan(
        path=config.output,
        num_samples=writer.manifest.num_samples,
        num_views=writer.manifest.views.num_views,
        num_shards=writer.num_shards,
        todo=writer.missing(),
    )


def images_of(config: CacheConfig, manifest: storage.Manifest) -> ImageFolderDataset:
    """The images of the cache `manifest` describes: the listing this process made when it
    created the cache, else the keys and labels the cache stored (a Dask worker, a later
    step): the folder is never listed again."""
    key = (config.location().url, manifest.dataset_fingerprint, manifest.created_at)
    with _lock:
        if key in _listings:
            return _listings[key]
    with storage.open_cache(config.location()) as reader:
        images = ImageFolderDataset.from_keys(
            config.dataset_root, config.split, reader.keys, reader.labels
        )
    _remember(config, manifest, images)
    return images


def _remember(config: CacheConfig, manifest: storage.Manifest, images: ImageFolderDataset) -> None:
    with _lock:
        _listings[(config.location().url, manifest.dataset_fingerprint, manifest.created_at)] = (
            images
        )
        while len(_listings) > 4:  # a long-lived Dask worker serves pass after pass
            _listings.popitem(last=False)


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
    dataset = images_of(config, manifest)
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
