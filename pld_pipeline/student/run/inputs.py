"""What a student run reads, checked: the first half of `build_run`, and all that `pld train`
and `pld sweep` check before they start a flow.

`check_run(config)` lists the datasets, opens the cache and checks it against them and
the run, plans the targets, and checks the loss, the batch split, the models and the run
folder: every mistake in a config is one clear error before Prefect or a model starts.
`build_run` is `check_run` plus the model, the optimizer and the loaders.

The `pld` command runs its flow in its own process, so the inputs it checked wait there
(`keep`), keyed by the run's config, and `build_run` takes them: one listing of a
1.28 M-image folder per command, not one for the check and one for the run. They cannot
travel as a flow parameter (parameters are JSON: a config, not a listing). A run started
any other way (the UI, a deployment, a notebook, a DDP rank) finds nothing waiting and
checks for itself.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import storage
from pld_pipeline.configs.train import SweepConfig, TrainConfig, expand_grid
from pld_pipeline.datasets import ImageFolderDataset, split_folder
from pld_pipeline.label_order import load_dataset

if TYPE_CHECKING:
    import numpy as np

    from pld_pipeline.student.data.target_plan import TargetPlan


@dataclass
class RunInputs:
    """A run's checked inputs: its images, the cache and the plan of what to read from it.

    Attributes:
        train_index: the training samples, without those the pass recorded as bad.
        reader: the open cache (None without one).
        first_slabs: the first epoch's cached views, being read since the check ended
            ({view: Future of its slab}; empty for a resumed run or without a cache).
    """

    config: TrainConfig
    train_images: ImageFolderDataset
    val_images: ImageFolderDataset | None
    reader: storage.CacheReader | None
    plan: TargetPlan
    train_index: np.ndarray
    first_slabs: dict[int, Future] = field(default_factory=dict)


@dataclass
class _Shared:
    """What a sweep's grid points share, listed and checked once: datasets and caches."""

    datasets: dict[str, ImageFolderDataset] = field(default_factory=dict)
    checked: dict[str, np.ndarray] = field(default_factory=dict)  # cache check -> train_index

    def dataset(self, root: str, split: str | None, classes: Any) -> ImageFolderDataset:
        key = json.dumps([root, split, classes])
        if key not in self.datasets:
            self.datasets[key] = load_dataset(root, split, classes)
        return self.datasets[key]


def check_run(config: TrainConfig, shared: _Shared | None = None) -> RunInputs:
    """Check a student run and return what it reads; nothing is written.

    Raises:
        DatasetError; storage.NotACacheError / IncompleteCacheError / DatasetMismatchError /
        ManifestMismatchError / CacheLocationError; ClassListError, LabelOrderError;
        ConfigError (K, dense targets, labels, batch size); TemperatureNotCachedError;
        LossInputError; ModelNotFoundError, WeightsNotFoundError; CheckpointError (the run
        folder holds another run).
    """
    shared = shared or _Shared()
    # Wrong paths first, before torch loads (losses, models): that takes seconds.
    split_folder(config.dataset_root, config.dataset_split)
    if config.val_root:
        split_folder(config.val_root, config.val_split)
    reader = None if config.cache is None else storage.open_cache(config.cache_location())
    if reader is not None:
        reader.prefetch_index()  # the cache's side of the checks, read while the folder is listed

    from pld_pipeline.losses import make_loss  # noqa: PLC0415
    from pld_pipeline.student.data import target_plan  # noqa: PLC0415
    from pld_pipeline.student.data.cached_dataset import good_indices  # noqa: PLC0415
    from pld_pipeline.student.data.loaders import split_batch  # noqa: PLC0415
    from pld_pipeline.student.run.run_dir import RunDir  # noqa: PLC0415
    from pld_pipeline.student.run.student_model import check_student_available  # noqa: PLC0415
    from pld_pipeline.teacher.models import check_teacher_available  # noqa: PLC0415

    make_loss(config.loss.name, **config.loss.make_kwargs())
    resuming = RunDir(config.run_dir).prepare(config, write=False)
    first_slabs = {}
    if reader is not None:
        # What to read is the manifest's and the config's: planned, and the first epoch's
        # views started reading (a resumed run starts elsewhere), before the folder is listed.
        plan = target_plan.plan_targets(reader.manifest, config)
        if not resuming:
            first_slabs = {v: reader.prefetch(v, k=plan.load_k) for v in _first_views(plan, config)}
    images = shared.dataset(config.dataset_root, config.dataset_split, config.classes)
    val_images = None
    if config.val_root:
        val_images = ImageFolderDataset(config.val_root, config.val_split, images.classes)
    if reader is None:
        plan = target_plan.supervised_plan(images, config)
        train_index = good_indices(None, len(images))
    else:
        key = json.dumps(
            [reader.path, config.dataset_root, config.dataset_split, config.classes,
             config.student.num_classes, config.allow_label_mismatch]
        )  # fmt: skip
        if key not in shared.checked:
            target_plan.check_cache_data(reader, images, config)
            shared.checked[key] = good_indices(reader.bad_mask(), reader.num_samples)
        train_index = shared.checked[key]
        target_plan.check_labels_fit(images, plan.num_classes, config)
        target_plan.warn_if_views_differ(plan, config)
    split_batch(config.batch_size, len(train_index), 1, config.views_per_image)
    check_student_available(config.student)
    if config.online_teacher is not None:
        check_teacher_available(config.online_teacher)
    return RunInputs(config, images, val_images, reader, plan, train_index, first_slabs)


def _first_views(plan: TargetPlan, config: TrainConfig) -> set[int]:
    """The cached views epoch 0 trains on (`epoch_views.epoch_view_ids`; view 0 of an eval cache)."""
    from pld_pipeline.student.data.epoch_views import epoch_view_ids  # noqa: PLC0415

    if not plan.replay_cache:
        return {0}
    return set(epoch_view_ids(0, config.views_per_image, plan.num_views))


def check_train_run(config: TrainConfig) -> RunInputs:
    """`check_run`, its inputs left for the run this process starts next (`take`)."""
    inputs = check_run(config)
    keep(inputs)
    return inputs


def check_sweep(config: SweepConfig) -> None:
    """Check every unfinished grid point as `check_run` does (with `resume` on, as the sweep
    runs them), listing each dataset and checking each cache once, and leave their inputs
    for their runs; a finished run in `sweep_dir` must belong to this config and cache.

    Raises:
        The errors of `check_run`; CheckpointError for a finished run of another config or
        cache.
    """
    from pld_pipeline.student.run.run_dir import RunDir  # noqa: PLC0415

    shared = _Shared()
    for _, point in expand_grid(config):
        run = point.model_copy(update={"resume": True})
        if RunDir(run.run_dir).finished_result(run) is None:
            keep(check_run(run, shared))


_waiting: dict[str, RunInputs] = {}
_lock = threading.Lock()


def keep(inputs: RunInputs) -> None:
    """Leave checked inputs for the run of the same config in this process."""
    with _lock:
        _waiting[inputs.config.model_dump_json()] = inputs


def take(config: TrainConfig) -> RunInputs | None:
    """The inputs `keep` left for a run of exactly this config (once), else None."""
    with _lock:
        return _waiting.pop(config.model_dump_json(), None)
