"""Images joined with the cache: per-sample views, samplers, targets gathered by index.

Each DataLoader item is one image, decoded once and replayed for the m views of its epoch
(`views_per_image`, see `epoch_views`); `collate_views` flattens a batch of b images into
b * m samples, image-major (`view_order` may then spread an image's views over m
neighbouring batches). The cached
targets of a batch are gathered in the main process from the epoch's in-memory view slabs
by (sample index, view slot) (numpy fancy indexing, no file reads) and moved to the device
as compact `CachedTargets` or dense logits. So sampler order, batch size and worker count
never depend on how the cache was written.

An image that was fine in the teacher pass but cannot be read now (deleted, permissions
changed, damaged on disk) is skipped, not fatal: the dataset returns an `Unreadable` item
in its place, the collate leaves it out of the batch and lists it in
`ViewBatch.unreadable`, and the epoch loop warns with its key and counts it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from pld_pipeline.configs.base import DEFAULT_RATIO, DEFAULT_SCALE
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import BadImageError
from pld_pipeline.losses import CachedTargets
from pld_pipeline.student.data.epoch_views import distinct_views  # noqa: F401 - re-exported
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
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    crop_pct: float = 0.875

    def get(self, i: int, height: int, width: int) -> tuple[tuple[int, int, int, int], bool]:
        return sample_view(
            self.mode, self.seed, self.view, i, height, width, self.scale, self.ratio, self.crop_pct
        )


class EpochViewSampler(torch.utils.data.Sampler):
    """Wraps an index sampler; yields (index, views of that index) for the current epoch.

    The views (one per slot, m per image) travel with the indices, so the dataset holds no
    per-epoch state and DataLoader workers can persist across epochs.
    """

    def __init__(self, index_sampler: torch.utils.data.Sampler) -> None:
        self.index_sampler = index_sampler
        self._slots: list[list[ViewRef] | SampledViews] | None = None
        self._skip = 0

    def set_epoch(
        self,
        epoch: int,
        views: StoredViews | SampledViews | Sequence[StoredViews | SampledViews],
        skip: int = 0,
    ) -> None:
        """Select the epoch's sample order and the views of each slot.

        Args:
            epoch: the epoch (reseeds the index sampler's order).
            views: one entry per slot (m entries for m views per image), or a single one.
            skip: leave out the first `skip` indices of this epoch's order (a run resumed
                in the middle of an epoch).
        """
        if hasattr(self.index_sampler, "set_epoch"):
            self.index_sampler.set_epoch(epoch)
        slots = [views] if isinstance(views, StoredViews | SampledViews) else list(views)
        self._slots = [v.refs() if isinstance(v, StoredViews) else v for v in slots]
        self._skip = skip

    def __len__(self) -> int:
        return max(0, len(self.index_sampler) - self._skip)

    def __iter__(self):  # noqa: ANN204
        if self._slots is None:
            raise RuntimeError("EpochViewSampler.set_epoch must be called before iterating")
        slots = self._slots
        for i in itertools.islice(self.index_sampler, self._skip, None):
            yield (i, tuple(s if isinstance(s, SampledViews) else s[i] for s in slots))


class Unreadable(NamedTuple):
    """What a dataset returns for an image it cannot read or decode now (the collate
    leaves it out of the batch): its index, key and the reason."""

    index: int
    key: str
    reason: str

    @classmethod
    def of(cls, images: ImageFolderDataset, i: int, exc: BadImageError) -> Unreadable:
        return cls(i, images.keys[i], exc.reason)


def split_unreadable(items: Sequence[Any]) -> tuple[list[Any], tuple[Unreadable, ...]]:
    """(the readable items, the `Unreadable` ones) of a batch."""
    skipped = tuple(it for it in items if isinstance(it, Unreadable))
    return [it for it in items if not isinstance(it, Unreadable)], skipped


class ViewBatch(NamedTuple):
    """A training or evaluation batch of b images x m views, image-major (B = b * m).

    Attributes:
        images: uint8 [B, 3, S, S].
        labels: int64 [B].
        index: int64 [B] sample index of each row.
        slot: int64 [B] view slot of each row (0 .. m - 1).
        teacher_images: uint8 [B, 3, T, T] at the teacher's size (online mode), else None.
        unreadable: the images of this batch that could not be read (left out of it).
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    slot: torch.Tensor
    teacher_images: torch.Tensor | None = None
    unreadable: tuple[Unreadable, ...] = ()


def collate_views(items: list[tuple | Unreadable]) -> ViewBatch:
    """Collate `StudentViewDataset` items (each [m, 3, S, S]) into one `ViewBatch` of b * m
    rows; `Unreadable` items are left out and listed (a batch of only those has no rows)."""
    items, skipped = split_unreadable(items)
    if not items:
        return ViewBatch(*(torch.zeros(0, dtype=torch.int64) for _ in range(4)), None, skipped)
    m = items[0][0].shape[0]
    count = torch.full((len(items),), m)
    teacher = None
    if len(items[0]) > 3:
        teacher = torch.cat([it[3] for it in items])
    return ViewBatch(
        images=torch.cat([it[0] for it in items]),
        labels=torch.tensor([it[1] for it in items]).repeat_interleave(count),
        index=torch.tensor([it[2] for it in items]).repeat_interleave(count),
        slot=torch.arange(m).repeat(len(items)),
        teacher_images=teacher,
        unreadable=skipped,
    )


class StudentViewDataset(torch.utils.data.Dataset):
    """(index, views) -> (uint8 images [m, 3, S, S], label, index[, uint8 teacher images]),
    or `Unreadable` for an image that cannot be read or decoded now.

    The image is decoded once (`ImageFolderDataset.load_tensor`) and every view of the
    item is replayed from it. Images stay uint8 until the device (see
    `views.normalize_batch`): 4x fewer bytes through worker pipes and host-to-device
    copies. With `teacher_size` (online mode) the same boxes and flips are also replayed
    at the teacher's input size and interpolation.
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

    def __getitem__(self, item: tuple[int, Sequence[ViewRef | SampledViews]]) -> tuple | Unreadable:
        i, refs = item
        try:
            pixels = self.images.load_tensor(i)
        except BadImageError as exc:
            return Unreadable.of(self.images, i, exc)
        student, teacher = self.replay(pixels, resolve_views(refs, i, *pixels.shape[1:]))
        label = int(self.images.labels[i])
        return (student, label, i) if teacher is None else (student, label, i, teacher)

    def replay(
        self, pixels: torch.Tensor, boxes: Sequence[tuple[Sequence[int], bool]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The views of one decoded image: uint8 [m, 3, S, S], and [m, 3, T, T] at the
        teacher's size (None without an online teacher)."""

        def at(size: int, mode: str) -> torch.Tensor:
            return torch.stack([replay_view(pixels, c, f, size, mode) for c, f in boxes])

        student = at(self.size, self.interpolation)
        if self.teacher_size is None:
            return student, None
        return student, at(self.teacher_size, self.teacher_interpolation)


def resolve_views(
    refs: Sequence[ViewRef | SampledViews], i: int, height: int, width: int
) -> list[tuple[tuple[int, int, int, int], bool]]:
    """((top, left, h, w), flip) of each view of sample `i`: stored, or drawn for its size."""
    return [r.get(i, height, width) if isinstance(r, SampledViews) else r for r in refs]


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


def gather_targets(
    slabs,  # noqa: ANN001 - storage.ViewSlab or a list of them (one per view slot)
    index: torch.Tensor | np.ndarray,
    form: str,
    device: torch.device | str = "cpu",
    slot: torch.Tensor | np.ndarray | None = None,
) -> CachedTargets | torch.Tensor:
    """The cached targets of a batch, gathered from the view slabs by sample index and slot.

    Args:
        slabs: the epoch's ViewSlab per view slot (rows start at `slab.start`), or one slab.
        index: [B] sample indices (dataset positions).
        form: "compact" (CachedTargets) or "dense" (float32 logits [B, C], full caches).
        device: where the tensors go (on CUDA through pinned memory, without waiting).
        slot: [B] view slot of each row (which slab it reads); None = all slot 0.

    Returns:
        CachedTargets with topk_idx [B, K] int64, topk_logp [B, K] float32, lse [B, nT]
        float32, gt_logit [B] float32; or dense logits [B, C] float32.
    """
    slabs = list(slabs) if isinstance(slabs, list | tuple) else [slabs]
    index = np.asarray(index, dtype=np.int64)
    slots = None if slot is None or len(slabs) == 1 else np.asarray(slot, dtype=np.int64)
    cuda = torch.device(device).type == "cuda"

    def take(name: str) -> np.ndarray:
        arrays = [getattr(s, name) for s in slabs]
        if slots is None:
            return arrays[0][index - slabs[0].start]
        out = np.empty((len(index), *arrays[0].shape[1:]), dtype=arrays[0].dtype)
        for j, (slab, array) in enumerate(zip(slabs, arrays, strict=True)):
            rows = slots == j
            out[rows] = array[index[rows] - slab.start]
        return out

    def put(name: str, dtype: torch.dtype) -> torch.Tensor:
        # Gather and copy in the stored (compact) dtype, widen on the device. On CUDA the
        # copy goes from pinned memory, so it is queued without waiting for the GPU.
        host = torch.from_numpy(np.ascontiguousarray(take(name)))
        if cuda:
            host = host.pin_memory()
        return host.to(device, non_blocking=cuda).to(dtype)

    if form == "dense":
        return put("logits", torch.float32)
    return CachedTargets(
        topk_idx=put("topk_idx", torch.int64),
        topk_logp=put("topk_logp", torch.float32),
        lse=put("lse", torch.float32),
        temperatures=tuple(float(t) for t in slabs[0].temperatures),
        gt_logit=put("gt_logit", torch.float32),
    )


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
