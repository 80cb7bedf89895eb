"""Images joined with the cache: per-sample views, per-epoch view slabs, targets gathered by index.

The DataLoader only decodes and replays images; it yields (image, label, index). The cached
targets of a batch are then gathered in the main process from the epoch's in-memory view
slab by those indices (numpy fancy indexing, no file reads) and moved to the device as
compact `CachedTargets` or dense logits. So sampler order, batch size and worker count never
depend on how the cache was written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.losses import CachedTargets
from pld_pipeline.views import replay_view, sample_view

logger = logging.getLogger(__name__)


ViewRef = tuple  # ((top, left, h, w), flip) or a SampledViews, resolved per image in a worker


@dataclass(frozen=True)
class StoredViews:
    """The cache's own boxes and flips for one view: the student replays exactly these.

    Attributes:
        crop: [N, 4] int (top, left, h, w) in source pixels.
        flip: [N] bool/uint8.
    """

    crop: np.ndarray
    flip: np.ndarray

    def refs(self) -> list[ViewRef]:
        """[N] ((top, left, h, w), flip) per sample, as plain Python values (cheap to pickle)."""
        return list(zip(map(tuple, self.crop.tolist()), map(bool, self.flip.tolist()), strict=True))


@dataclass(frozen=True)
class SampledViews:
    """Views drawn from (seed, view, index) by `sample_view` in the worker (they need the
    image size): the eval transform, or the student's own random crops when the cache
    holds only the teacher's eval view."""

    mode: str
    seed: int
    view: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_pct: float = 0.875

    def get(self, i: int, height: int, width: int) -> tuple[tuple[int, int, int, int], bool]:
        return sample_view(
            self.mode, self.seed, self.view, i, height, width, self.scale, self.ratio, self.crop_pct
        )


class EpochViewSampler(torch.utils.data.Sampler):
    """Wraps an index sampler; yields (index, view of that index) for the current epoch.

    The views travel with the indices, so the dataset holds no per-epoch state and
    DataLoader workers can persist across epochs.
    """

    def __init__(self, index_sampler: torch.utils.data.Sampler) -> None:
        self.index_sampler = index_sampler
        self._refs: list[ViewRef] | None = None
        self._sampled: SampledViews | None = None

    def set_epoch(self, epoch: int, views: StoredViews | SampledViews) -> None:
        """Select the epoch's sample order and views."""
        if hasattr(self.index_sampler, "set_epoch"):
            self.index_sampler.set_epoch(epoch)
        if isinstance(views, StoredViews):
            self._refs, self._sampled = views.refs(), None
        else:
            self._refs, self._sampled = None, views

    def __len__(self) -> int:
        return len(self.index_sampler)

    def __iter__(self):  # noqa: ANN204
        if self._refs is None and self._sampled is None:
            raise RuntimeError("EpochViewSampler.set_epoch must be called before iterating")
        for i in self.index_sampler:
            yield (i, self._refs[i] if self._refs is not None else self._sampled)


class ViewDataset(torch.utils.data.Dataset):
    """(index, view) -> (uint8 image [3, S, S], label, index[, uint8 teacher image]).

    Images stay uint8 until the device (see `views.normalize_batch`): 4x fewer bytes through
    worker pipes and host-to-device copies. With `teacher_size` (online mode) the same box and
    flip are also replayed at the teacher's input size and interpolation.
    """

    def __init__(
        self,
        images: ImageFolderDataset,
        size: int,
        interpolation: str = "bilinear",
        teacher_size: int | None = None,
        teacher_interpolation: str = "bilinear",
    ) -> None:
        self.images = images
        self.size = size
        self.interpolation = interpolation
        self.teacher_size = teacher_size
        self.teacher_interpolation = teacher_interpolation

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, ViewRef | SampledViews]) -> tuple:
        i, ref = item
        image = self.images.load_rgb(i)
        crop, flip = ref.get(i, image.height, image.width) if isinstance(ref, SampledViews) else ref
        pixels = replay_view(image, crop, flip, self.size, self.interpolation)
        label = int(self.images.labels[i])
        if self.teacher_size is None:
            return pixels, label, i
        teacher_pixels = replay_view(
            image, crop, flip, self.teacher_size, self.teacher_interpolation
        )
        return pixels, label, i, teacher_pixels


class ShuffleSampler(torch.utils.data.Sampler):
    """A per-epoch permutation of `indices`, split over ranks (DistributedSampler's rule).

    The order depends only on (seed, epoch): a resumed run, any worker count and any rank
    count see the same global order. Rank r takes positions r, r + W, r + 2W, ... of the
    permutation, padded by wrapping so every rank gets ceil(M / W) samples.
    """

    def __init__(
        self, indices: Sequence[int], seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.indices) // self.world_size)

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.indices), generator=g).tolist()
        total = len(self) * self.world_size
        perm += (perm * (total // max(len(perm), 1) + 1))[: total - len(perm)]
        return iter(self.indices[perm[self.rank : total : self.world_size]].tolist())


class IndexSampler(torch.utils.data.Sampler):
    """A fixed list of indices in order (evaluation, split over ranks without padding)."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):  # noqa: ANN204
        return iter(self.indices)


class ViewSlabs:
    """The view slab of each epoch (view = epoch mod V), with the next one prefetched.

    Holds at most the current slab and one in flight, so memory stays at two views.
    """

    def __init__(self, reader, num_views: int, k: int | None) -> None:  # noqa: ANN001 - storage.CacheReader
        self.reader = reader
        self.num_views = num_views
        self.k = k
        self._current: tuple[int, object] | None = None
        self._pending: tuple[int, Future] | None = None

    def view_of(self, epoch: int) -> int:
        return epoch % self.num_views

    def get(self, epoch: int):  # noqa: ANN201 - storage.ViewSlab
        """The slab of `epoch`'s view (from memory, the prefetch, or a blocking load)."""
        v = self.view_of(epoch)
        if self._current is not None and self._current[0] == v:
            return self._current[1]
        if self._pending is not None and self._pending[0] == v:
            slab = self._pending[1].result()
            self._pending = None
        else:
            slab = self.reader.load_view(v, k=self.k)
        self._current = (v, slab)
        return slab

    def prefetch(self, epoch: int) -> None:
        """Start loading `epoch`'s view in the background unless it is already at hand."""
        v = self.view_of(epoch)
        if (self._current and self._current[0] == v) or (self._pending and self._pending[0] == v):
            return
        self._pending = (v, self.reader.prefetch(v, k=self.k))


class NoSlabs:
    """The slabs of a run without a cache: there are no targets to load."""

    def view_of(self, epoch: int) -> int:
        return 0

    def get(self, epoch: int) -> None:
        return None

    def prefetch(self, epoch: int) -> None:
        return None


def gather_targets(
    slab,  # noqa: ANN001 - storage.ViewSlab
    index: torch.Tensor | np.ndarray,
    form: str,
    device: torch.device | str = "cpu",
) -> CachedTargets | torch.Tensor:
    """The cached targets of a batch, gathered from the view slab by sample index.

    Args:
        slab: the epoch's ViewSlab (rows start at `slab.start`).
        index: [B] sample indices (dataset positions).
        form: "compact" (CachedTargets) or "dense" (float32 logits [B, C], full caches).
        device: where the tensors go.

    Returns:
        CachedTargets with topk_idx [B, K] int64, topk_logp [B, K] float32, lse [B, nT]
        float32, gt_logit [B] float32; or dense logits [B, C] float32.
    """
    rows = np.asarray(index, dtype=np.int64) - slab.start
    non_blocking = torch.device(device).type == "cuda"

    def put(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        # Gather and copy in the stored (compact) dtype, widen on the device.
        return (
            torch.from_numpy(np.ascontiguousarray(array[rows]))
            .to(device, non_blocking=non_blocking)
            .to(dtype)
        )

    if form == "dense":
        return put(slab.logits, torch.float32)
    return CachedTargets(
        topk_idx=put(slab.topk_idx, torch.int64),
        topk_logp=put(slab.topk_logp, torch.float32),
        lse=put(slab.lse, torch.float32),
        temperatures=tuple(float(t) for t in slab.temperatures),
        gt_logit=put(slab.gt_logit, torch.float32),
    )


def distinct_views(epochs: int, num_views: int, start: int = 0) -> int:
    """How many different cached views epochs [start, epochs) visit (view = epoch mod V)."""
    return len({e % num_views for e in range(start, epochs)})


def good_indices(bad: np.ndarray | None, num_samples: int) -> np.ndarray:
    """Sample indices usable for training: not marked bad in any view.

    Args:
        bad: [V, N] bool (the cache's bad mask) or None.

    Returns:
        [M] int64 sorted indices.
    """
    if bad is None:
        return np.arange(num_samples, dtype=np.int64)
    return np.flatnonzero(~np.asarray(bad, dtype=bool).any(axis=0)).astype(np.int64)
