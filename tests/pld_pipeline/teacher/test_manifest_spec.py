"""The stored manifest is the teacher pass's spec: building shards and the replay check use
the cache's own preprocessing, not what the config's teacher resolves to now, and the
finishing step opens the cache once.

References are independent of the pass: records read back with plain zarr, a float64 copy
of the teacher run one image at a time on pixels normalised by hand.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from images_testlib import CORRUPT_KEY

import storage
from pld_pipeline import errors
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.teacher import cache_build, cache_report, replay_check
from pld_pipeline.views import replay_view, sample_view

TEACHER = "pld_pipeline.demo.small_models:seeded_tiny_cnn"
# What the cache is written with, and what the config's teacher says afterwards.
STORED = {"input_size": 24, "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.2, 0.3],
          "interpolation": "bilinear"}  # fmt: skip
EDITED = {"input_size": 16, "mean": [0.1, 0.2, 0.3], "std": [0.05, 0.06, 0.07],
          "interpolation": "nearest"}  # fmt: skip
K = 4
# fp16 storage of the log-probs: half an ulp near 8 is 4e-3.
TOLERANCE = 5e-3


def _config(root: Path, out: Path, preprocess: dict, **overrides) -> CacheConfig:
    data = {
        "dataset_root": str(root), "output": str(out), "classes": "sorted-folders",
        "min_label_agreement": 0.0, "format": "topk", "k": K, "temperatures": [1.0, 2.0],
        "shard_size": 5, "batch_size": 4, "num_workers": 0, "device": "cpu", "amp": "off",
        "teacher": {"name": TEACHER, "num_classes": 10, **preprocess},
        "views": {"mode": "replay", "num_views": 2, "seed": 3},
        "replay_check_samples": 12, "replay_check_tolerance": TOLERANCE,
    }  # fmt: skip
    return CacheConfig.model_validate(data | overrides)


def _reference_logp(
    model: torch.nn.Module, data: ImageFolderDataset, crop: np.ndarray, flip: np.ndarray,
    preprocess: dict,
) -> np.ndarray:  # fmt: skip
    """float64 log-softmax [N, C] of one view: each image replayed from its stored box at
    `preprocess`'s size, normalised by hand, through a float64 copy of the teacher."""
    ref = copy.deepcopy(model).double().eval()
    mean = torch.tensor(preprocess["mean"], dtype=torch.float64)[:, None, None]
    std = torch.tensor(preprocess["std"], dtype=torch.float64)[:, None, None]
    rows = []
    for i in range(len(data)):
        pixels = replay_view(
            data.load_rgb(i), crop[i], bool(flip[i]), preprocess["input_size"],
            preprocess["interpolation"],
        )  # fmt: skip
        with torch.no_grad():
            rows.append(ref(((pixels.double() / 255 - mean) / std)[None])[0])
    return torch.log_softmax(torch.stack(rows), dim=1).numpy()


def test_shards_and_replay_check_follow_the_stored_manifest(tiny_imagefolder, tmp_path):
    out = tmp_path / "cache.zarr"
    written = _config(tiny_imagefolder, out, STORED)
    cache_build.prepare_cache(written)
    # The config's teacher now resolves to other preprocessing (same model, same weights);
    # building the shards and checking them must still use what the manifest stored.
    edited = _config(tiny_imagefolder, out, EDITED)
    assert cache_build.teacher_of(edited).preprocess.input_size == EDITED["input_size"]
    for shard in range(storage.open_cache(out).num_shards):
        cache_build.build_shard(edited, shard)

    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["pld_cache"]["teacher"]["input_size"] == STORED["input_size"]
    data = ImageFolderDataset(tiny_imagefolder)
    model = cache_build.teacher_of(edited).model
    seed, scale, ratio = 3, (0.08, 1.0), (3 / 4, 4 / 3)
    for view in range(2):
        crop, flip = group["crop"][view], group["flip"][view]
        for i in range(len(data)):
            h, w = data.load_rgb(i).size[::-1]
            assert (tuple(crop[i].tolist()), bool(flip[i])) == sample_view(
                "replay", seed, view, i, h, w, scale, ratio
            )
        expected = _reference_logp(model, data, crop, flip, STORED)
        idx = group["topk_idx"][view].astype(np.int64)
        assert np.array_equal(idx, np.argsort(-expected, axis=1, kind="stable")[:, :K])
        cached = group["topk_logp"][view].astype(np.float64)
        assert np.abs(cached - np.take_along_axis(expected, idx, 1)).max() < TOLERANCE
        # The edited preprocessing gives other numbers: a pass or check that used it fails.
        edited_logp = _reference_logp(model, data, crop, flip, EDITED)
        assert np.abs(cached - np.take_along_axis(edited_logp, idx, 1)).max() > 20 * TOLERANCE

    check = replay_check.replay_check(edited)
    assert check.passed
    assert check.samples == len(data)
    assert check.max_abs_error < TOLERANCE


def test_finalize_opens_the_cache_once(tiny_imagefolder_corrupt, tmp_path, monkeypatch):
    out = tmp_path / "cache.zarr"
    config = _config(tiny_imagefolder_corrupt, out, STORED, skip_bad_images=True)
    plan = cache_build.prepare_cache(config)
    for shard in range(plan.num_shards):
        cache_build.build_shard(config, shard)
    opened = []
    real = storage.location.read_manifest

    def counting(path, mode):
        opened.append(mode)
        return real(path, mode=mode)

    monkeypatch.setattr(storage.location, "read_manifest", counting)
    report = cache_report.finalize_cache(config)
    assert opened == ["r+"]  # one open store: the writer, and a reader of it

    # What it recorded, read back with plain zarr.
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["bad_samples"] == [CORRUPT_KEY] == report.bad_keys
    label_check = group.attrs["pld_cache"]["label_check"]
    bad = group["bad"][...].any(axis=0)
    top1 = group["topk_idx"][:, ~bad, 0] == group["label"][~bad]
    assert label_check["records"] == top1.size == 2 * (len(bad) - 1)
    assert label_check["top1"] == pytest.approx(top1.mean())
    assert report.label_check == label_check


def test_a_q8_pass_holds_the_teacher_within_its_rounding_and_passes_the_replay_check(
    tiny_imagefolder, tmp_path
):
    from storage.quantize import max_error

    out = tmp_path / "q8.zarr"
    config = _config(tiny_imagefolder, out, STORED, record_precision="q8")
    plan = cache_build.prepare_cache(config)
    for shard in range(plan.num_shards):
        cache_build.build_shard(config, shard)
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["pld_cache"]["record_precision"] == "q8"
    data = ImageFolderDataset(tiny_imagefolder)
    model = cache_build.teacher_of(config).model
    reader = storage.open_cache(out)
    for view in range(2):
        crop, flip = group["crop"][view], group["flip"][view]
        expected = _reference_logp(model, data, crop, flip, STORED)
        slab = reader.load_view(view)
        idx = slab.topk_idx.astype(np.int64)
        assert np.array_equal(idx, np.argsort(-expected, axis=1, kind="stable")[:, :K])
        want = np.take_along_axis(expected, idx, 1)
        assert (np.abs(slab.topk_logp - want) <= max_error(want) + TOLERANCE).all()
    check = replay_check.replay_check(config)
    assert check.passed
    assert check.max_abs_error < TOLERANCE
    # The q8 allowance does not hide a wrong record: 40 more root steps on the 2nd class.
    writable = zarr.open_group(str(out), mode="r+")
    codes = writable["topk_code"][...]
    codes[:, :, 1] += 40
    writable["topk_code"][...] = codes
    with pytest.raises(errors.ReplayCheckError, match="Replay check failed"):
        replay_check.replay_check(config)
