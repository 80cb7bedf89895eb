"""A torch Dataset of replayed views: each sample of a range decoded once, every view replayed.

Used by the teacher pass (in DataLoader workers) and usable by anything that needs the
teacher's exact input pixels for a range of samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from pld_pipeline.errors import BadImageError
from pld_pipeline.views import replay_view, sample_view

if TYPE_CHECKING:
    from pld_pipeline.datasets import ImageFolderDataset
    from storage import ViewInfo

logger = logging.getLogger(__name__)

# Filler crop/hw of an undecodable image: the writer requires positive sizes, `bad` marks it.
BAD_CROP = (0, 0, 1, 1)
BAD_HW = (1, 1)


class ViewImages(Dataset):
    """Samples [start, stop) decoded once each and replayed for each requested view.

    Item j: "image" uint8 [nV, 3, S, S], "index" (start + j), "label" int64, "crop" int32 [nV, 4]
    (top, left, h, w), "flip" bool [nV], "hw" int32 [2], "bad" bool. With
    `skip_bad_images`, an undecodable image gives zeros, filler crop/hw and bad=True.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        view_info: ViewInfo,
        views: Sequence[int],
        start: int,
        stop: int,
        size: int,
        interpolation: str = "bilinear",
        skip_bad_images: bool = False,
    ) -> None:
        self.dataset, self.view_info, self.views = dataset, view_info, list(views)
        self.start, self.stop, self.size = start, stop, size
        self.interpolation, self.skip_bad_images = interpolation, skip_bad_images

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = self.start + j
        nv, s = len(self.views), self.size
        try:
            pixels = TF.pil_to_tensor(self.dataset.load_rgb(i))
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
