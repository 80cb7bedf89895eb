"""views_per_image: one decode per image per epoch, m cached views trained from it.

Checked against independent routes: PIL decoding and `replay_view` of the boxes the cache
stores (themselves checked against `sample_view`), decodes counted by wrapping the
decoder, a mid-epoch crash and resume against an uninterrupted run, and the rank split of
a two-rank job.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from train_testlib import make_cache, train_config

import storage
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import ConfigError
from pld_pipeline.rgb import load_rgb
from pld_pipeline.student.data.cached_dataset import Unreadable, ViewBatch
from pld_pipeline.student.data.epoch_views import EpochSlabs, distinct_views, epoch_view_ids
from pld_pipeline.student.data.loaders import build_loaders, split_batch, train_views
from pld_pipeline.student.data.target_plan import check_cache
from pld_pipeline.student.data.view_order import resume_offsets, spread_views
from pld_pipeline.student.run.ddp import DistContext
from pld_pipeline.student.run.train import fit
from pld_pipeline.views import replay_view, sample_view

TIMING = {"epoch_time_s", "data_time_s", "target_time_s", "target_share", "images_per_s"}
CACHE_SEED = 3  # conftest.make_cache's view seed


@pytest.fixture(scope="module")
def three_view_cache(tmp_path_factory, tiny_imagefolder) -> Path:
    """3 replay views of the 12 mixed JPEG/PNG/BMP images of `tiny_imagefolder`."""
    return make_cache(
        tmp_path_factory.mktemp("vpi") / "c.zarr", tiny_imagefolder, num_views=3, shard_size=5
    )


def test_epoch_view_ids_cycle_through_every_view():
    assert [epoch_view_ids(e, 1, 3) for e in range(4)] == [(0,), (1,), (2,), (0,)]
    assert [epoch_view_ids(e, 2, 3) for e in range(3)] == [(0, 1), (2, 0), (1, 2)]
    assert [epoch_view_ids(e, 4, 10) for e in range(3)] == [
        (0, 1, 2, 3),
        (4, 5, 6, 7),
        (8, 9, 0, 1),
    ]
    assert all(len(set(epoch_view_ids(e, 3, 3))) == 3 for e in range(5))
    assert distinct_views(1, 10, views_per_image=4) == 4
    assert distinct_views(3, 10, 0, 4) == 10
    with pytest.raises(ConfigError, match="views_per_image=4"):
        epoch_view_ids(0, 4, 3)


def test_each_view_equals_replay_of_a_separate_decode(three_view_cache, tiny_imagefolder, tmp_path):
    m = 2
    cfg = train_config(three_view_cache, tiny_imagefolder, tmp_path / "r", views_per_image=m,
                       batch_size=4)  # fmt: skip
    reader = storage.open_cache(three_view_cache)
    images = ImageFolderDataset(tiny_imagefolder)
    plan = check_cache(reader, images, cfg)
    slabs = EpochSlabs(reader, plan.num_views, None, m)
    per_rank, steps = split_batch(cfg.batch_size, len(images), 1, m)
    assert (per_rank, steps) == (4, 6)  # 2 images of 2 views per step: 12 images, 6 steps
    loaders = build_loaders(cfg, images, None, np.arange(len(images)), per_rank, DistContext())
    for epoch, views in ((0, (0, 1)), (1, (2, 0))):
        assert slabs.views_of(epoch) == views
        epoch_slabs = slabs.get(epoch)
        assert [s.view for s in epoch_slabs] == list(views)
        loaders.train_sampler.set_epoch(epoch, train_views(cfg, plan, epoch_slabs, epoch))
        seen = []
        for batch in loaders.train:
            assert batch.images.shape == (4, 3, 16, 16)
            assert batch.slot.tolist() == [0, 1, 0, 1]
            # Image-major rows: both views of an image sit side by side in one batch.
            assert batch.index[0::2].tolist() == batch.index[1::2].tolist()
            for row in range(len(batch.index)):
                i, slot = int(batch.index[row]), int(batch.slot[row])
                v = views[slot]
                pil = load_rgb(images.path(i))  # a separate decode, by PIL
                crop, flip = sample_view("replay", CACHE_SEED, v, i, pil.height, pil.width)
                slab = epoch_slabs[slot]
                assert tuple(slab.crop[i]) == crop
                assert bool(slab.flip[i]) == flip
                expected = replay_view(TF.pil_to_tensor(pil), crop, flip, 16)
                assert torch.equal(batch.images[row], expected), (epoch, i, v)
                assert int(batch.labels[row]) == int(images.labels[i])
                seen.append((i, v))
        assert sorted(seen) == sorted((i, v) for i in range(len(images)) for v in views)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_decodes_per_trained_sample_is_one_over_m(
    m, three_view_cache, tiny_imagefolder, tmp_path, monkeypatch
):
    decodes = []
    real = ImageFolderDataset.load_tensor
    monkeypatch.setattr(
        ImageFolderDataset, "load_tensor", lambda self, i: decodes.append(i) or real(self, i)
    )
    cfg = train_config(three_view_cache, tiny_imagefolder, tmp_path / "r", views_per_image=m,
                       batch_size=2 * m, epochs=2)  # fmt: skip
    result = fit(cfg)
    trained = sum(r["samples"] for r in result.history)
    assert trained == result.samples_seen == 2 * 12 * m
    assert sorted(decodes) == sorted(list(range(12)) * 2)  # every image once per epoch
    assert Fraction(len(decodes), trained) == Fraction(1, m)
    assert result.views_per_image == m
    assert result.sample_epochs == 2 * m
    assert [r["views"] for r in result.history] == [list(epoch_view_ids(e, m, 3)) for e in range(2)]
    assert result.distinct_views == distinct_views(2, 3, views_per_image=m)


def _without_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


class CrashError(Exception):
    pass


@pytest.mark.parametrize(
    ("layout", "every", "crash_at"),
    [
        ("same_batch", 2, 4),  # mid first epoch
        ("same_batch", 2, 10),  # mid second epoch
        ("spread", 1, 4),  # 3 steps done: in the middle of a group of 2 regrouped batches
        ("spread", 2, 10),
    ],
)
def test_mid_epoch_resume_with_two_views_equals_uninterrupted(
    layout, every, crash_at, three_view_cache, tiny_imagefolder, tmp_path, monkeypatch
):
    # 12 images, 2 views, batch 4 (2 images): 6 steps per epoch, a checkpoint every
    # `every` steps. Dropout draws from the global RNG, so its restore is tested too.
    settings = {
        "views_per_image": 2,
        "views_layout": layout,
        "batch_size": 4,
        "epochs": 2,
        "checkpoint_every": every,
        "student": {"name": "pld_test_models:dropout_cnn", "image_size": 16},
        "optim": {"name": "sgd", "lr": 0.05, "warmup_epochs": 1, "weight_decay": 1e-4},
    }
    full = fit(train_config(three_view_cache, tiny_imagefolder, tmp_path / "full", **settings))

    import pld_pipeline.student.run.train as train_module

    real_step, calls = train_module.train_step, []

    def crashing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == crash_at:
            raise CrashError(f"simulated crash at step {crash_at}")
        return real_step(*args, **kwargs)

    cut = train_config(three_view_cache, tiny_imagefolder, tmp_path / "cut", **settings)
    monkeypatch.setattr(train_module, "train_step", crashing_step)
    with pytest.raises(CrashError):
        fit(cut)
    monkeypatch.setattr(train_module, "train_step", real_step)
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    done = crash_at - 1 - (crash_at - 1) % every  # steps covered by the last checkpoint
    assert saved["in_epoch"]["epoch"] == done // 6
    assert saved["epoch"] == done // 6 - 1
    assert saved["in_epoch"]["totals"]["steps"] == done % 6

    resumed = fit(cut.model_copy(update={"resume": True}))
    assert _without_timing(resumed.history) == _without_timing(full.history)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]


def test_ranks_split_whole_images(three_view_cache, tiny_imagefolder, tmp_path):
    m = 3
    cfg = train_config(three_view_cache, tiny_imagefolder, tmp_path / "r", views_per_image=m,
                       batch_size=6)  # fmt: skip
    reader = storage.open_cache(three_view_cache)
    images = ImageFolderDataset(tiny_imagefolder)
    plan = check_cache(reader, images, cfg)
    epoch_slabs = EpochSlabs(reader, plan.num_views, None, m).get(0)
    per_rank, steps = split_batch(cfg.batch_size, len(images), 2, m)
    assert (per_rank, steps) == (3, 6)  # one image of 3 views per rank per step
    rows: dict[int, list[tuple[int, int]]] = {}
    for rank in (0, 1):
        ctx = DistContext(rank=rank, world_size=2)
        loaders = build_loaders(cfg, images, None, np.arange(12), per_rank, ctx)
        loaders.train_sampler.set_epoch(0, train_views(cfg, plan, epoch_slabs, 0))
        rows[rank] = [
            (int(i), int(s)) for b in loaders.train for i, s in zip(b.index, b.slot, strict=True)
        ]
    ranks_of = {i: {r for r in rows for j, _ in rows[r] if j == i} for i in range(12)}
    assert all(len(owners) == 1 for owners in ranks_of.values())  # no image on two ranks
    for rank_rows in rows.values():
        for i in {i for i, _ in rank_rows}:
            assert sorted(s for j, s in rank_rows if j == i) == [0, 1, 2]  # all its views


def test_eval_cache_draws_m_own_crops_per_image(tiny_imagefolder, tmp_path):
    cache = make_cache(tmp_path / "eval.zarr", tiny_imagefolder, mode="eval", num_views=1)
    r = fit(train_config(cache, tiny_imagefolder, tmp_path / "e", views_per_image=2,
                         batch_size=4, epochs=2))  # fmt: skip
    assert r.distinct_views == 1
    assert r.views_match is False
    assert r.samples_seen == 2 * 12 * 2
    assert [h["views"] for h in r.history] == [[0, 0], [0, 0]]


@pytest.mark.parametrize("decode", ["cuda", "cpu-crop-on-cuda"])
def test_decode_on_the_gpu_needs_a_cuda_device(
    decode, three_view_cache, tiny_imagefolder, tmp_path
):
    with pytest.raises(ValueError, match=f"decode='{decode}' works on the GPU"):
        train_config(three_view_cache, tiny_imagefolder, tmp_path / "r", decode=decode)


@pytest.mark.skipif(torch.cuda.is_available(), reason="device 'auto' resolves to cuda here")
@pytest.mark.parametrize("decode", ["cuda", "cpu-crop-on-cuda"])
def test_decode_on_the_gpu_without_a_gpu_decodes_on_the_cpu_and_says_so(
    decode, three_view_cache, tiny_imagefolder, tmp_path, caplog
):
    import logging

    cfg = train_config(three_view_cache, tiny_imagefolder, tmp_path / "r", device="auto",
                       decode=decode, epochs=1, batch_size=4)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pld_pipeline"):
        r = fit(cfg)
    assert r.samples_seen == 12
    assert f"decode='{decode}' but the run is on cpu" in caplog.text


def _batches(images_per_batch: int, m: int, count: int) -> list[ViewBatch]:
    """Loader-like batches: image-major rows; pixel value = image index, then slot."""
    out = []
    for k in range(count):
        index = torch.arange(k * images_per_batch, (k + 1) * images_per_batch)
        index = index.repeat_interleave(m)
        slot = torch.arange(m).repeat(images_per_batch)
        pixels = (index * 10 + slot).to(torch.uint8)[:, None, None, None].expand(-1, 3, 2, 2)
        out.append(ViewBatch(pixels.clone(), index % 7, index, slot, pixels.clone()))
    return out


def test_spread_layout_puts_one_view_of_distinct_images_in_each_batch():
    m, b = 3, 2
    loader = _batches(b, m, 7)  # two full groups of 3 batches and one of 1
    spread = list(spread_views(loader, m, torch.device("cpu")))
    assert len(spread) == 7
    assert all(len(x.index) == m * b for x in spread)
    for g in range(2):
        group = spread[g * m : (g + 1) * m]
        images = set(range(g * m * b, (g + 1) * m * b))
        for j, batch in enumerate(group):  # batch j of a group: slot j of all its images
            assert set(batch.index.tolist()) == images
            assert batch.slot.tolist() == [j] * m * b
            assert torch.equal(batch.images[:, 0, 0, 0], (batch.index * 10 + j).to(torch.uint8))
            assert torch.equal(batch.labels, batch.index % 7)
            assert torch.equal(batch.teacher_images, batch.images)
    rows = sorted((int(i), int(s)) for x in spread for i, s in zip(x.index, x.slot, strict=True))
    assert rows == sorted((int(i), int(s)) for x in loader for i, s in zip(x.index, x.slot,
                                                                             strict=True))  # fmt: skip
    assert spread[6].index.tolist() == [12, 13] * m  # a short last group keeps its rows
    resumed = list(spread_views(loader[3:], m, torch.device("cpu"), drop_first=2))
    assert all(torch.equal(a.images, b.images) for a, b in zip(resumed, spread[5:], strict=True))


def test_spread_layout_regroups_batches_short_of_unreadable_images():
    """A loader batch that left out unreadable images is shorter (or empty): its group
    still spreads slot j of every remaining image into batch j, and the unreadable images
    travel with the group's first batch."""
    m = 2
    full, short, empty = _batches(3, m, 3)
    keep = short.index != 4  # image 4 unreadable
    short = ViewBatch(*(t[keep] for t in short[:5]), unreadable=(Unreadable(4, "k4", "gone"),))
    empty = ViewBatch(*(t[:0] for t in empty[:5]), unreadable=(Unreadable(6, "k6", "gone"),))
    spread = list(spread_views([full, short, empty, full], m, torch.device("cpu")))
    assert len(spread) == 4
    images = [0, 1, 2, 3, 5]
    for j, batch in enumerate(spread[:2]):  # the first group: 5 images, 2 slots
        assert batch.index.tolist() == images
        assert batch.slot.tolist() == [j] * 5
        assert torch.equal(batch.images[:, 0, 0, 0], (batch.index * 10 + j).to(torch.uint8))
    assert [u.index for u in spread[0].unreadable] == [4]
    assert spread[1].unreadable == ()
    # The second group: an empty batch and a full one; the empty one's image is listed.
    assert sum(len(b.index) for b in spread[2:]) == 6
    assert [u.index for b in spread[2:] for u in b.unreadable] == [6]


def test_resume_offsets_restart_a_spread_group_at_its_first_batch():
    assert resume_offsets(7, 3, "spread") == (6, 1)
    assert resume_offsets(6, 3, "spread") == (6, 0)
    assert resume_offsets(7, 3, "same_batch") == (7, 0)
    assert resume_offsets(7, 1, "spread") == (7, 0)
