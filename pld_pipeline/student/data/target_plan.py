"""Before the first step: check the cache against the dataset and the run config, plan the targets.

Everything a run needs from the cache is decided here (how many classes, which K to load,
compact or dense targets, whether the student sees the teacher's views), so a mismatch is one
clear error before any training, never a failure in the middle of an epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import storage
from pld_pipeline import label_order
from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import ConfigError
from pld_pipeline.losses import make_loss
from pld_pipeline.losses.errors import TemperatureNotCachedError
from pld_pipeline.losses.targets import temperature_index

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetPlan:
    """What the run reads from the cache.

    Attributes:
        num_classes: classes of the teacher = of the student.
        cache_format: the cache's format, "topk" or "full".
        form: "compact" or "dense".
        load_k: k passed to `CacheReader.load_view` (None = as stored / dense logits).
        k: classes per sample the loss sees (C for dense).
        num_views: V; epoch e uses view e mod V.
        replay_cache: the cache stores replayable random views (mode "replay"); else the
            student draws its own random crops each epoch.
        views_match: True when the student sees the views its targets were made from
            (replay cache, or online mode); False for an eval cache read offline.
        manifest_hash: sha256 of the manifest JSON (identifies the cache).
    """

    num_classes: int
    cache_format: str
    form: str
    load_k: int | None
    k: int
    num_views: int
    replay_cache: bool
    views_match: bool
    manifest_hash: str


def check_cache(reader, images: ImageFolderDataset, config: TrainConfig) -> TargetPlan:  # noqa: ANN001
    """Validate `reader`'s cache for this run and decide the target plan.

    `check_cache_data`, then `plan_targets`; warns when the student's views will differ from
    the teacher's (an eval cache read offline).

    Raises:
        The errors of `check_cache_data` and `plan_targets`.
    """
    check_cache_data(reader, images, config)
    plan = plan_targets(reader.manifest, config)
    check_labels_fit(images, plan.num_classes, config)
    warn_if_views_differ(plan, config)
    return plan


def warn_if_views_differ(plan: TargetPlan, config: TrainConfig) -> None:
    """Say so when the student's views will not be the teacher's (an eval cache read offline)."""
    if not plan.views_match:
        logger.warning(
            "Cache %s holds the teacher's eval view only: the student trains on its own random "
            "crops, so teacher and student views differ (the 'fixed teacher' setting).",
            config.cache,
        )


def check_cache_data(reader, images: ImageFolderDataset, config: TrainConfig) -> None:  # noqa: ANN001
    """Check that the cache was made from this run's images and may be trained from.

    Checks, in order: every (view, shard) written, keys and fingerprint equal to the dataset's,
    the student's class count, the pass's label flag and the dataset's labels equal to the
    cache's (`label_order.check_run_labels`).

    Raises:
        storage.IncompleteCacheError / DatasetMismatchError / ManifestMismatchError: from
            `reader.validate`.
        LabelOrderError: the pass flagged the cache and allow_label_mismatch is off.
        ClassListError: the dataset maps its folders to other labels than the cache.
    """
    expect = {}
    if config.student.num_classes is not None:
        expect["teacher.num_classes"] = config.student.num_classes
    reader.validate(
        expect=expect, dataset_keys=list(images.keys), dataset_fingerprint=images.fingerprint()
    )
    label_order.check_run_labels(
        reader, images, str(config.cache), config.dataset_root, config.allow_label_mismatch
    )


def check_labels_fit(images: ImageFolderDataset, num_classes: int, config: TrainConfig) -> None:
    """The dataset's labels must be the teacher's class indices (below its class count).

    Raises:
        ConfigError: a label at or above `num_classes`.
    """
    if len(images.labels) and int(images.labels.max()) >= num_classes:
        raise ConfigError(
            f"Dataset {config.dataset_root!r} has labels up to {int(images.labels.max())} but the "
            f"cache's teacher has {num_classes} classes; use the dataset the cache was made from."
        )


def plan_targets(manifest, config: TrainConfig) -> TargetPlan:  # noqa: ANN001
    """Decide what the run reads from a cache with this manifest (storage.Manifest), from the
    manifest and the config alone (before the images are listed).

    Checks K' <= K, dense targets only from a full cache, and the loss's temperature (the
    configured one, else the loss's default) among the cached ones (compact targets read
    offline).

    Raises:
        ConfigError: K' too large, dense targets from a top-K cache.
        TemperatureNotCachedError: the loss temperature was not cached.
        LossInputError: the loss's parameters are invalid.
    """
    m = manifest
    num_classes = int(m.teacher.num_classes)
    form, k = config.target_form, config.k
    if form == "dense":
        if m.format != "full":
            raise ConfigError(
                f"target_form='dense' needs a full-logit cache, but {config.cache!r} stores top-"
                f"{m.k}; use target_form='compact' or a cache made with format='full'."
            )
        load_k, used_k = None, num_classes
    else:
        limit = m.k if m.format == "topk" else num_classes
        if k is not None and k > limit:
            raise ConfigError(
                f"k={k} exceeds what {config.cache!r} holds ({m.format} cache, K={limit}); use "
                f"k <= {limit} or re-run the teacher pass with a larger K."
            )
        used_k = k if k is not None else limit
        # A top-K cache truncates at load only when asked; a full cache computes top-K at load.
        load_k = k if m.format == "topk" else used_k
    if form == "compact" and config.online_teacher is None and config.loss.name != "ce":
        _check_temperature_cached(m, config)
    replay_cache = m.views.mode == "replay"
    if replay_cache and config.views_per_image > int(m.views.num_views):
        raise ConfigError(
            f"views_per_image={config.views_per_image} but {config.cache!r} holds "
            f"{m.views.num_views} views per image; use views_per_image <= "
            f"{m.views.num_views} or cache more views (views.num_views)."
        )
    return TargetPlan(
        num_classes=num_classes,
        cache_format=m.format,
        form=form,
        load_k=load_k,
        k=used_k,
        num_views=int(m.views.num_views),
        replay_cache=replay_cache,
        views_match=replay_cache or config.online_teacher is not None,
        manifest_hash=storage.manifest_hash(m),
    )


def _check_temperature_cached(manifest, config: TrainConfig) -> None:  # noqa: ANN001
    """The loss's temperature must be one whose logsumexp the cache holds."""
    temperature, what = config.loss.temperature, "loss temperature"
    if temperature is None:  # the loss's own default, e.g. T=4 for kd
        temperature = make_loss(config.loss.name, **config.loss.params).params.get("temperature")
        what = f"{config.loss.name}'s default temperature"
    if temperature is None or temperature_index(manifest.temperatures, temperature) is not None:
        return
    raise TemperatureNotCachedError(
        f"{what} {temperature:g} is not cached in {config.cache!r} (cached: "
        f"{', '.join(f'{t:g}' for t in manifest.temperatures)}); set loss.temperature to one of "
        "these, use a full cache with target_form='dense', or re-run the teacher pass with it."
    )


def supervised_plan(images: ImageFolderDataset, config: TrainConfig) -> TargetPlan:
    """The plan of a run without a cache (`cache: null`, loss ce): no targets, the
    student's own random crops every epoch, classes from the config or the dataset."""
    num_classes = config.student.num_classes or len(images.classes)
    if len(images.labels) and int(images.labels.max()) >= num_classes:
        raise ConfigError(
            f"student.num_classes={num_classes} but {config.dataset_root!r} has labels up to "
            f"{int(images.labels.max())}; raise num_classes or leave it null."
        )
    return TargetPlan(
        num_classes=num_classes, cache_format="none", form="compact", load_k=None, k=0,
        num_views=1, replay_cache=False, views_match=False, manifest_hash="none",
    )  # fmt: skip


def check_slab_values(slab, num_classes: int) -> None:  # noqa: ANN001 - storage.ViewSlab
    """Check a loaded view slab's values once, on the host, before its steps use it.

    The steps skip the losses' per-batch value checks (each would wait for the GPU), so
    this is where NaN/Inf targets or class indices outside the head are caught: one pass
    over the slab's arrays with numpy when the slab is read.

    Raises:
        LossInputError: a non-finite value or an out-of-range class, with its view and row.
    """
    import numpy as np  # noqa: PLC0415

    from pld_pipeline.losses import LossInputError  # noqa: PLC0415

    def fail(what: str, row: int) -> None:
        raise LossInputError(
            f"cache view {slab.view}, sample {slab.start + row}: {what}; the cache is damaged "
            "or belongs to another class set: rebuild it (or that view's shard)."
        )

    for name in ("topk_logp", "logits", "lse", "gt_logit"):
        values = getattr(slab, name)
        if values is None:
            continue
        # One sum per row is the fast path: NaN and Inf propagate into it.
        finite = np.isfinite(values.reshape(len(values), -1).sum(axis=1, dtype=np.float64))
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            if not np.isfinite(values[row]).all():
                fail(f"{name} holds a non-finite value", row)
    for name, top in (("topk_idx", num_classes), ("label", num_classes)):
        values = getattr(slab, name)
        if values is None or values.size == 0:
            continue
        bad = (values < 0) | (values >= top)
        if bad.any():
            row = int(np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))[0])
            seen = int(np.asarray(values[row])[np.asarray(bad[row])].flat[0])
            fail(f"{name} holds class {seen} outside [0, {top - 1}]", row)
