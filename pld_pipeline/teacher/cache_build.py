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


@dataclass
class CacheReport:
    """The finished cache's figures (what the flow publishes as a table)."""

    path: str
    manifest_hash: str  # storage.manifest_hash: the id runs on this cache record
    num_samples: int
    num_views: int
    format: str
    k: int
    num_classes: int
    disk_mb: float
    bytes_per_record: float
    compression_ratio: float
    top1: dict[int, float]
    tail_mass: dict[int, float]
    bad_keys: list[str]
    label_check: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def finalize_cache(config: CacheConfig) -> CacheReport:
    """Check that every (view, shard) is done, record bad samples, compute the stats, and
    check that the teacher agrees with the labels.

    A label agreement below `min_label_agreement` is recorded in the manifest
    (`label_check.flagged`) and returned, not raised, so the stats can be published first;
    call `require_label_agreement(report)` after that (the flow does).

    Raises:
        storage.IncompleteCacheError: some (view, shard) is missing (listed).
    """
    # The cache is opened once; the reader reads the writer's open store.
    writer = storage.open_writer(config.location())
    with writer.reader() as reader:
        reader.validate()
        bad = reader.bad_mask().any(axis=0)
        bad_keys = [str(k) for k in np.asarray(reader.keys)[bad]]
        if bad_keys:
            writer.record_bad_samples(bad_keys)
        summary = storage.summary_of(reader)
        content_id = storage.manifest_hash(reader.manifest)
    label_check = None
    if summary.top1:  # some record could be decoded
        check = label_order.agreement_check(
            float(np.mean(list(summary.top1.values()))),
            int((~bad).sum()) * summary.num_views,
            summary.num_classes,
            config.min_label_agreement,
        )
        writer.record_label_check(check)
        label_check = asdict(check)
        if check.flagged:
            logger.error(label_order.mismatch_message(label_check, config.output))
    return CacheReport(
        path=config.output,
        manifest_hash=content_id,
        num_samples=summary.num_samples,
        num_views=summary.num_views,
        format=summary.format,
        k=summary.k,
        num_classes=summary.num_classes,
        disk_mb=summary.disk_bytes / 1e6,
        bytes_per_record=summary.bytes_per_record,
        compression_ratio=summary.compression_ratio,
        top1={int(v): float(t) for v, t in summary.top1.items()},
        tail_mass={int(v): float(t) for v, t in summary.tail_mass.items()},
        bad_keys=bad_keys,
        label_check=label_check,
    )


def require_label_agreement(report: dict[str, Any]) -> None:
    """Fail a pass whose labels were flagged by `finalize_cache` (the cache stays, flagged).

    Raises:
        errors.LabelOrderError: the teacher's top-1 against the labels was below the threshold.
    """
    label_order.require_agreement(report.get("label_check"), report["path"])


@dataclass
class ReplayCheck:
    """Cached vs. recomputed teacher log-probs on a random sample of records."""

    samples: int
    max_abs_error: float
    tolerance: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replay_check(config: CacheConfig, seed: int = 0) -> ReplayCheck:
    """Recompute the teacher on `replay_check_samples` random (view, sample) records.

    Compares the cached top-K log-probs (or full logits' log-softmax) with a fresh forward
    on the replayed view, like TinyViT's check of saved logits.

    Raises:
        errors.ReplayCheckError: the largest error exceeds `replay_check_tolerance`.
    """
    count = config.replay_check_samples
    if count == 0:
        return ReplayCheck(0, 0.0, config.replay_check_tolerance, True)
    reader = storage.open_cache(config.location())
    manifest = reader.manifest
    rng = np.random.default_rng(seed)
    good = np.flatnonzero(~reader.bad_mask().any(axis=0))
    picks = rng.choice(good, size=min(count, len(good)), replace=False)
    views = rng.integers(0, manifest.views.num_views, size=len(picks))
    model = teacher_of(config).model
    dataset = dataset_of(config)
    # The stored manifest is the spec, as in `build_shard`: the check replays what was written.
    options = PassOptions(device=config.device, batch_size=1, num_workers=0, amp=config.amp)
    worst = 0.0
    for view, sample in zip(views.tolist(), picks.tolist()):
        # One record read per check: a whole view of ImageNet would be hundreds of MB.
        cached = reader.load_view(view, start=sample, stop=sample + 1)
        fresh = compute_views(model, dataset, manifest, [view], sample, sample + 1, options)[view]
        worst = max(worst, _logp_error(cached, 0, fresh))
    passed = worst <= config.replay_check_tolerance
    result = ReplayCheck(len(picks), worst, config.replay_check_tolerance, passed)
    if not passed:
        raise errors.ReplayCheckError(
            f"Replay check failed for {config.output}: cached and recomputed teacher log-probs "
            f"differ by up to {worst:.4g} (tolerance {config.replay_check_tolerance}). The "
            "teacher, its weights or the images changed since caching; rebuild the cache "
            "with overwrite=True, or raise replay_check_tolerance if AMP noise explains it."
        )
    return result


def _logp_error(slab: storage.ViewSlab, row: int, fresh: dict[str, np.ndarray]) -> float:
    """Largest |cached - fresh| log-prob over the cached classes of one record."""
    if slab.logits is not None:
        cached = torch.log_softmax(torch.from_numpy(slab.logits[row].astype(np.float32)), -1)
        recomputed = torch.log_softmax(torch.from_numpy(fresh["logits"][0]), -1)
        return float((cached - recomputed).abs().max())
    idx = slab.topk_idx[row].astype(np.int64)
    cached = slab.topk_logp[row].astype(np.float32)
    # Compare class by class: near-ties may swap order between the two forwards.
    fresh_logp = dict(zip(fresh["topk_idx"][0].tolist(), fresh["topk_logp"][0].tolist()))
    errors_ = []
    for c, value in zip(idx.tolist(), cached.tolist()):
        if c in fresh_logp:
            errors_.append(abs(value - fresh_logp[c]))
        else:  # fell out of the fresh top-K: it must then be at most the K-th log-prob
            errors_.append(max(0.0, value - float(fresh["topk_logp"][0][-1])))
    return max(errors_) if errors_ else 0.0


def stats_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per view, plus the replay check, for the flow's table artifact."""
    rows = []
    for view, top1 in sorted(report["top1"].items(), key=lambda kv: int(kv[0])):
        rows.append({
            "view": int(view),
            "teacher_top1_pct": 100.0 * top1,
            "tail_mass": report["tail_mass"].get(view),
            "records": report["num_samples"],
            "bytes_per_record": report["bytes_per_record"],
        })  # fmt: skip
    check = report.get("replay_check") or {}
    rows.append({
        "view": "all",
        "teacher_top1_pct": 100.0 * float(np.mean(list(report["top1"].values()) or [0.0])),
        "tail_mass": None,
        "records": report["num_samples"] * report["num_views"],
        "bytes_per_record": report["bytes_per_record"],
        "disk_mb": report["disk_mb"],
        "compression_ratio": report["compression_ratio"],
        "bad_samples": len(report["bad_keys"]),
        "replay_max_abs_error": check.get("max_abs_error"),
        "replay_check": "passed" if check.get("passed") else "failed/skipped",
        "label_check": label_check_cell(report.get("label_check")),
    })  # fmt: skip
    return rows


def label_check_cell(check: dict[str, Any] | None) -> str:
    """The stats table's label-check entry: the flag first, then the figures."""
    if check is None:
        return "not checked"
    figures = f"top-1 {check['top1']:.4f} vs required {check['min_agreement']:.4f}"
    if check["flagged"]:
        return f"FLAGGED: LABEL MISMATCH ({figures}); labels probably not in the teacher's order"
    return f"passed ({figures})"


def stats_description(report: dict[str, Any]) -> str:
    """The stats table's description; a flagged cache says so first."""
    text = f"Teacher cache {report['path']}: per-view statistics, replay and label checks"
    if (report.get("label_check") or {}).get("flagged"):
        text = "LABEL MISMATCH (flagged). " + text
    return text
