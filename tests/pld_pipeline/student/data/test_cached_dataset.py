"""Images joined with the cache: replayed pixels, gathered targets, samplers, per-epoch slabs."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest
import torch
from torch import nn

import storage
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.losses import CachedTargets
from pld_pipeline.student.data.cached_dataset import (
    EpochViewSampler,
    SampledViews,
    ShuffleSampler,
    StoredViews,
    StudentViewDataset,
    gather_targets,
    good_indices,
)
from pld_pipeline.student.data.epoch_views import EpochSlabs, distinct_views
from pld_pipeline.teacher.compute import compute_shard
from pld_pipeline.teacher.options import PassOptions
from pld_pipeline.views import normalize_batch, sample_view

MEAN, STD, SIZE = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 12


class RecordingTeacher(nn.Module):
    """Returns fixed logits and keeps every input batch it was shown."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.head = nn.Linear(3, num_classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def teacher_pass_cache(tmp_path_factory, tiny_imagefolder):
    """A 2-view replay cache written by the real teacher pass, with the teacher's inputs."""
    images = ImageFolderDataset(tiny_imagefolder)
    view_info = storage.ViewInfo(mode="replay", num_views=2, seed=9)
    manifest = storage.Manifest(
        teacher=storage.TeacherInfo("rec", "none", "0" * 64, 5, SIZE, MEAN, STD, "bilinear"),
        views=view_info,
        format="topk",
        k=3,
        temperatures=(1.0, 2.0),
        dataset_fingerprint=images.fingerprint(),
        num_samples=len(images),
        shard_size=5,
    )
    path = tmp_path_factory.mktemp("tp") / "cache.zarr"
    writer = storage.create(path, manifest, images.keys, images.labels)
    teacher = RecordingTeacher()
    seen = {}
    for v in range(2):
        for s in range(writer.num_shards):
            start, stop = writer.shard_range(s)
            teacher.seen.clear()
            records = compute_shard(
                teacher, images, manifest, v, start, stop, PassOptions(batch_size=4)
            )
            writer.write_shard(v, s, records)
            seen[(v, start)] = torch.cat(teacher.seen)
    return path, images, seen


@pytest.mark.parametrize("view", [0, 1])
def test_replayed_pixels_equal_the_teachers(teacher_pass_cache, view):
    path, images, seen = teacher_pass_cache
    slab = storage.open_cache(path).load_view(view)
    refs = StoredViews(slab.crop, slab.flip).refs()
    data = StudentViewDataset(images, SIZE, "bilinear")
    pixels = torch.cat([data[(i, (refs[i],))][0] for i in range(len(images))])
    ours = normalize_batch(pixels, MEAN, STD)
    theirs = torch.cat([seen[(view, start)] for start in sorted(s for v, s in seen if v == view)])
    assert torch.equal(ours, theirs.float())


def test_cached_boxes_are_the_view_rng_boxes(teacher_pass_cache):
    path, images, _ = teacher_pass_cache
    reader = storage.open_cache(path)
    for v in range(2):
        slab = reader.load_view(v)
        for i in range(len(images)):
            img = images.load_rgb(i)
            crop, flip = sample_view("replay", 9, v, i, img.height, img.width)
            assert tuple(slab.crop[i]) == crop
            assert bool(slab.flip[i]) == flip


def test_student_size_replays_the_same_box(teacher_pass_cache):
    path, images, _ = teacher_pass_cache
    slab = storage.open_cache(path).load_view(1)
    refs = StoredViews(slab.crop, slab.flip).refs()
    data = StudentViewDataset(images, 20, teacher_size=SIZE)
    i = 4
    student, label, index, teacher = data[(i, (refs[i],))]
    assert student.shape == (1, 3, 20, 20)
    assert teacher.shape == (1, 3, SIZE, SIZE)
    student = student[0]
    assert student.dtype == torch.uint8
    assert (label, index) == (int(images.labels[i]), i)
    # Independent route: the box in source pixels, cropped and resized by PIL-free torch ops.
    top, left, h, w = (int(c) for c in slab.crop[i])
    src = torch.from_numpy(np.array(images.load_rgb(i))).permute(2, 0, 1)[
        :, top : top + h, left : left + w
    ]
    ref = torch.nn.functional.interpolate(
        src[None].double(), size=(20, 20), mode="bilinear", antialias=True, align_corners=False
    )[0]
    if slab.flip[i]:
        ref = ref.flip(-1)
    assert (student.double() - ref).abs().max() <= 1.0  # uint8 rounding


def test_gather_compact_targets_by_index(replay_cache):
    slab = storage.open_cache(replay_cache).load_view(1)
    idx = np.array([5, 0, 23, 5, 11])
    t = gather_targets(slab, idx, "compact")
    assert isinstance(t, CachedTargets)
    assert t.topk_idx.dtype == torch.int64
    assert t.topk_logp.dtype == torch.float32
    assert t.lse.dtype == torch.float32
    np.testing.assert_array_equal(t.topk_idx.numpy(), slab.topk_idx[idx].astype(np.int64))
    np.testing.assert_array_equal(t.topk_logp.numpy(), slab.topk_logp[idx].astype(np.float32))
    np.testing.assert_array_equal(t.lse.numpy(), slab.lse[idx])
    np.testing.assert_array_equal(t.gt_logit.numpy(), slab.gt_logit[idx])
    assert t.temperatures == (1.0, 2.0, 4.0)


def test_top_k_truncates_at_load(replay_cache):
    reader = storage.open_cache(replay_cache)
    full, cut = reader.load_view(0), reader.load_view(0, k=2)
    idx = np.arange(24)
    a, b = gather_targets(full, idx, "compact"), gather_targets(cut, idx, "compact")
    assert b.k == 2
    assert torch.equal(b.topk_idx, a.topk_idx[:, :2])
    assert torch.equal(b.topk_logp, a.topk_logp[:, :2])
    assert torch.equal(b.lse, a.lse)


def test_full_cache_serves_dense_and_any_k(full_cache):
    reader = storage.open_cache(full_cache)
    idx = np.array([3, 1, 2])
    dense = gather_targets(reader.load_view(0), idx, "dense")
    assert dense.shape == (3, 6)
    assert dense.dtype == torch.float32
    z = dense.double()
    compact = gather_targets(reader.load_view(0, k=3), idx, "compact")
    assert torch.equal(compact.topk_idx, z.topk(3, dim=1).indices)
    ref_logp = z.topk(3, dim=1).values - compact.lse[:, 0:1].double()
    torch.testing.assert_close(compact.topk_logp.double(), ref_logp, atol=2e-2, rtol=0)


def test_shuffle_sampler_is_seeded_per_epoch_and_splits_like_one_process():
    idx = np.arange(100, 123)  # 23 samples, not divisible by 2
    one = ShuffleSampler(idx, seed=4)
    one.set_epoch(3)
    order = list(one)
    assert sorted(order) == idx.tolist()
    assert order == list(one)
    one.set_epoch(4)
    assert list(one) != order
    ranks = [ShuffleSampler(idx, seed=4, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert len(r0) == len(r1) == 12 == len(ranks[0])
    # Step j of the 2-rank job sees the same samples as step j of one process at twice the batch.
    interleaved = [x for pair in zip(r0, r1, strict=True) for x in pair]
    assert interleaved[:23] == order
    assert interleaved[23] == order[0]


def test_epoch_view_sampler_attaches_views():
    crop = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])
    flip = np.array([0, 1, 0], dtype=np.uint8)
    sampler = EpochViewSampler(ShuffleSampler([2, 0], seed=0))
    with pytest.raises(RuntimeError, match="set_epoch"):
        list(sampler)
    sampler.set_epoch(0, StoredViews(crop, flip))
    assert sorted(sampler) == [(0, (((0, 1, 2, 3), False),)), (2, (((8, 9, 10, 11), False),))]
    views = SampledViews("eval", 0, 0)
    sampler.set_epoch(1, views)
    assert all(refs == (views,) for _, refs in sampler)


def test_distinct_views_and_good_indices():
    assert distinct_views(5, 2) == 2
    assert distinct_views(1, 4) == 1
    assert distinct_views(6, 4) == 4
    bad = np.zeros((2, 5), bool)
    bad[1, 3] = True
    assert good_indices(bad, 5).tolist() == [0, 1, 2, 4]
    assert good_indices(None, 3).tolist() == [0, 1, 2]


class FakeReader:
    def __init__(self):
        self.loads, self.prefetches = [], []

    def load_view(self, v, k=None):
        self.loads.append((v, k))
        return f"slab{v}"

    def prefetch(self, v, k=None):
        self.prefetches.append((v, k))
        future = Future()
        future.set_result(f"slab{v}")
        return future


def test_epoch_slabs_prefetch_next_view_and_reuse_a_single_view():
    reader = FakeReader()
    slabs = EpochSlabs(reader, num_views=3, k=2)
    assert slabs.get(0) == ["slab0"]
    slabs.prefetch(1)
    assert slabs.get(1) == ["slab1"]
    assert reader.loads == [(0, 2)]
    assert reader.prefetches == [(1, 2)]
    assert slabs.get(4) == ["slab1"]  # view 4 mod 3 = 1: in memory, no read
    one = FakeReader()
    single = EpochSlabs(one, num_views=1, k=None)
    for epoch in range(3):
        single.get(epoch)
        single.prefetch(epoch + 1)
    assert one.loads == [(0, None)]
    assert one.prefetches == []
