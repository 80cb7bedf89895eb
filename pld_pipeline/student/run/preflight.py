"""Checks before a run starts: everything a config names exists and fits the run.

The `pld` command calls these after reading a config and before it starts a flow (and
Prefect's server), so a missing dataset, a cache that does not fit the run, missing
weights or an uncached temperature is one clear error within seconds instead of a failed
flow run. Each check is the library's own, the one the run makes again when it starts;
nothing is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import storage
from pld_pipeline.configs.train import SweepConfig, TrainConfig, expand_grid
from pld_pipeline.datasets import ImageFolderDataset, split_folder
from pld_pipeline.label_order import load_dataset


@dataclass
class _Seen:
    """What a sweep's points share, checked once: dataset listings and caches."""

    datasets: dict[str, ImageFolderDataset] = field(default_factory=dict)
    readers: dict[str, storage.CacheReader] = field(default_factory=dict)
    num_good: dict[str, int] = field(default_factory=dict)  # per cache: samples not skipped
    checked: set[str] = field(default_factory=set)

    def reader(self, location: storage.Location) -> storage.CacheReader:
        key = json.dumps([location.url, dict(location.options)], default=str, sort_keys=True)
        if key not in self.readers:
            self.readers[key] = storage.open_cache(location)
        return self.readers[key]

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()

    def dataset(self, root: str, split: str | None, classes: Any) -> ImageFolderDataset:
        key = json.dumps([root, split, classes])
        if key not in self.datasets:
            self.datasets[key] = load_dataset(root, split, classes)
        return self.datasets[key]


def check_train_run(config: TrainConfig) -> None:
    """Check a student run: its datasets, the cache against them and the run, the loss, the
    student model, an online teacher's weights, the batch size and the run folder.

    Raises:
        DatasetError; storage.NotACacheError / IncompleteCacheError / DatasetMismatchError /
        ManifestMismatchError / CacheLocationError; ClassListError, LabelOrderError;
        ConfigError (K, dense targets, labels, batch size); TemperatureNotCachedError;
        LossInputError; ModelNotFoundError, WeightsNotFoundError; CheckpointError (the run
        folder holds another run).
    """
    seen = _Seen()
    try:
        _check_train_run(config, seen)
    finally:
        seen.close()


def _check_train_run(config: TrainConfig, seen: _Seen) -> None:
    """`check_train_run`, reusing what `seen` already listed, opened or checked."""
    # Wrong paths first, before torch loads (losses, models): that takes seconds.
    split_folder(config.dataset_root, config.dataset_split)
    if config.val_root:
        split_folder(config.val_root, config.val_split)
    reader = None if config.cache is None else seen.reader(config.cache_location())

    from pld_pipeline.losses import make_loss  # noqa: PLC0415
    from pld_pipeline.student.data.cached_dataset import good_indices  # noqa: PLC0415
    from pld_pipeline.student.data.loaders import split_batch  # noqa: PLC0415
    from pld_pipeline.student.data.target_plan import (  # noqa: PLC0415
        check_cache_data,
        plan_targets,
        supervised_plan,
    )
    from pld_pipeline.student.run.run_dir import RunDir  # noqa: PLC0415
    from pld_pipeline.student.run.student_model import check_student_available  # noqa: PLC0415
    from pld_pipeline.teacher.models import check_teacher_available  # noqa: PLC0415

    images = seen.dataset(config.dataset_root, config.dataset_split, config.classes)
    if config.val_root:
        ImageFolderDataset(config.val_root, config.val_split, images.classes)
    make_loss(config.loss.name, **config.loss.make_kwargs())
    if config.cache is None:
        supervised_plan(images, config)
        num_train = len(images)
    else:
        data_key = json.dumps(
            [reader.path, config.dataset_root, config.dataset_split, config.classes,
             config.student.num_classes, config.allow_label_mismatch]
        )  # fmt: skip
        if data_key not in seen.checked:
            check_cache_data(reader, images, config)
            seen.checked.add(data_key)
        plan_targets(reader.manifest, images, config)
        if reader.path not in seen.num_good:
            seen.num_good[reader.path] = len(good_indices(reader.bad_mask(), reader.num_samples))
        num_train = seen.num_good[reader.path]
    split_batch(config.batch_size, num_train, world_size=1, views_per_image=config.views_per_image)
    check_student_available(config.student)
    if config.online_teacher is not None:
        check_teacher_available(config.online_teacher)
    RunDir(config.run_dir).prepare(config, write=False)


def check_sweep(config: SweepConfig) -> None:
    """Check every grid point as `check_train_run` does (with `resume` on, as the sweep
    runs them), and that no finished run in `sweep_dir` belongs to another config or cache.

    Raises:
        The errors of `check_train_run`; CheckpointError for a finished run of another
        config or cache.
    """
    from pld_pipeline.student.run.run_dir import RunDir  # noqa: PLC0415

    seen = _Seen()
    try:
        for _, point in expand_grid(config):
            run = point.model_copy(update={"resume": True})
            if RunDir(run.run_dir).finished_result(run) is None:
                _check_train_run(run, seen)
    finally:
        seen.close()
