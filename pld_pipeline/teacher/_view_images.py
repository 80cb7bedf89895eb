"""Replayed views as a torch Dataset and DataLoader: each sample decoded once, every view replayed.

Used by the teacher pass (in DataLoader workers) and usable by anything that needs the
teacher's exact input pixels for a range of samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from pld_pipeline.errors import BadImageError
from pld_pipeline.views import normalize_batch, replay_view, sample_view

if TYPE_CHECKING:
    from pld_pipeline.datasets import ImageFolderDataset
    from pld_pipeline.teacher.options import PassOptions
    from storage import Manifest

logger = logging.getLogger(__name__)

# Filler crop/hw of an undecodable image: the writer requires positive sizes, `bad` marks it.
BAD_CROP = (0, 0, 1, 1)
BAD_HW = (1, 1)


class TeacherViewImages(Dataset):
    """Samples [start, stop) decoded once each and replayed for each requested view.

    The views (`manifest.views`) and the side S and resize method (`manifest.teacher`) come
    from the cache's manifest (a storage.Manifest or alike). Item j: "image" uint8
    [nV, 3, S, S], "index" (start + j), "label" int64, "crop" int32 [nV, 4]
    (top, left, h, w), "flip" bool [nV], "hw" int32 [2], "bad" bool. With
    `skip_bad_images`, an undecodable image gives zeros, filler crop/hw and bad=True.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        manifest: Manifest,
        views: Sequence[int],
        start: int,
        stop: int,
        skip_bad_images: bool = False,
    ) -> None:
        self.dataset, self.view_info, self.views = dataset, manifest.views, list(views)
        self.start, self.stop, self.size = start, stop, manifest.teacher.input_size
        self.interpolation = manifest.teacher.interpolation
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = self.start + j
        nv, s = len(self.views), self.size
        try:
            pixels = self.dataset.load_tensor(i)
        except BadImageError as exc:
            if not self.skip_bad_images:
                raise
            logger.warning("Recording sample %d (%s) as bad: %s", i, self.dataset.keys[i], exc)
            return {
                "image": torch.zeros(nv, 3, s, s, dtype=torch.uint8),
                "index": i,
                "label": int(self.dataset.labels[i]),
                "crop": torch.tensor([BAD_CROP] * nv, dtype=torch.int32),
                "flip": torch.zeros(nv, dtype=torch.bool),
                "hw": torch.tensor(BAD_HW, dtype=torch.int32),
                "bad": True,
            }
        h, w = pixels.shape[1], pixels.shape[2]
        vi = self.view_info
        images, crops, flips = [], [], []
        for v in self.views:
            crop, flip = sample_view(
                vi.mode, vi.seed, v, i, h, w, tuple(vi.scale), tuple(vi.ratio), vi.crop_pct
            )
            images.append(replay_view(pixels, crop, flip, s, self.interpolation))
            crops.append(crop)
            flips.append(flip)
        return {
            "image": torch.stack(images),
            "index": i,
            "label": int(self.dataset.labels[i]),
            "crop": torch.tensor(crops, dtype=torch.int32),
            "flip": torch.tensor(flips, dtype=torch.bool),
            "hw": torch.tensor((h, w), dtype=torch.int32),
            "bad": False,
        }


class NormalizeCollate:
    """Collate `TeacherViewImages` items and normalise the images to float32 in the worker.

    For CPU teachers with DataLoader workers: the float work then overlaps the forward in
    the main process. (CUDA teachers get uint8, 4x fewer bytes to copy, normalised on the
    device.) Picklable, so it works with every worker start method.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(items)
        batch["image"] = normalize_batch(batch["image"], self.mean, self.std)
        return batch


def make_teacher_loader(
    dataset: ImageFolderDataset,
    manifest: Manifest,
    views: Sequence[int],
    start: int,
    stop: int,
    options: PassOptions,
    device: torch.device,
) -> DataLoader:
    """The pass's DataLoader of `TeacherViewImages` batches ([b, nV, 3, S, S] each).

    CUDA: uint8 images in pinned memory (normalised on the device). CPU with workers:
    float32 images normalised in the workers (with `manifest.teacher`'s mean and std), off
    the forward's critical path. `device` is `options.device` resolved.
    """
    images = TeacherViewImages(dataset, manifest, views, start, stop, options.skip_bad_images)
    workers = options.num_workers
    in_workers = device.type == "cpu" and workers > 0
    pre = manifest.teacher
    return DataLoader(
        images,
        batch_size=max(1, options.batch_size // len(views)),
        num_workers=workers,
        collate_fn=NormalizeCollate(pre.mean, pre.std) if in_workers else None,
        pin_memory=device.type == "cuda",
        multiprocessing_context=options.multiprocessing_context if workers else None,
    )
