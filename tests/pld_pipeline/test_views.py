"""Views: (seed, view, index) determinism, RandomResizedCrop's distribution, replay pixels."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader

import storage
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import ConfigError, ViewError
from pld_pipeline.teacher._view_images import TeacherViewImages
from pld_pipeline.uint8_resize import resize_uint8_exact
from pld_pipeline.views import interpolation_mode, normalize_batch, replay_view, sample_view
from storage.synthetic import make_manifest

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def _replay(seed: int, v: int, i: int, h: int = 300, w: int = 451):
    return sample_view("replay", seed, v, i, h, w, SCALE, RATIO)


def test_same_key_same_view_whatever_the_order() -> None:
    forward = {i: _replay(7, 2, i) for i in range(200)}
    backward = {i: _replay(7, 2, i) for i in reversed(range(200))}
    assert forward == backward
    assert all(_replay(7, 2, i) == forward[i] for i in (5, 150, 3))


def test_views_and_seeds_differ() -> None:
    crops_v0 = [_replay(0, 0, i)[0] for i in range(50)]
    crops_v1 = [_replay(0, 1, i)[0] for i in range(50)]
    crops_s1 = [_replay(1, 0, i)[0] for i in range(50)]
    assert all(a != b for a, b in zip(crops_v0, crops_v1, strict=True))
    assert all(a != b for a, b in zip(crops_v0, crops_s1, strict=True))
    assert len(set(crops_v0)) == 50


def test_same_views_with_any_worker_count(tiny_imagefolder: Path) -> None:
    data = ImageFolderDataset(tiny_imagefolder)
    base = make_manifest(num_samples=len(data), num_views=3)
    spec = dataclasses.replace(
        base,
        teacher=dataclasses.replace(base.teacher, input_size=16),
        views=storage.ViewInfo("replay", 3, 11, SCALE, RATIO, 0.875),
    )

    def crops(workers: int, batch: int, start: int) -> dict[int, tuple]:
        ds = TeacherViewImages(data, spec, [2, 0], start, len(data))
        out = {}
        for b in DataLoader(ds, batch_size=batch, num_workers=workers):
            for idx, crop, flip in zip(
                b["index"].tolist(), b["crop"].tolist(), b["flip"].tolist(), strict=True
            ):
                out[idx] = (crop, flip)
        return out

    single = crops(0, 1, 0)
    assert crops(2, 5, 0) == single
    assert {i: single[i] for i in range(4, len(data))} == crops(0, 3, 4)  # a later shard start
    for i in (0, 7):
        h, w = data.load_rgb(i).size[::-1]
        expect = [sample_view("replay", 11, v, i, h, w, SCALE, RATIO) for v in (2, 0)]
        assert single[i] == ([list(c) for c, _ in expect], [f for _, f in expect])


def test_crops_follow_random_resized_crop_bounds() -> None:
    h, w = 300, 451
    fractions, log_aspects, flips = [], [], []
    for i in range(3000):
        (top, left, ch, cw), flip = _replay(3, 0, i, h, w)
        assert top >= 0
        assert left >= 0
        assert top + ch <= h
        assert left + cw <= w
        assert ch > 0
        assert cw > 0
        fractions.append(ch * cw / (h * w))
        log_aspects.append(math.log(cw / ch))
        flips.append(flip)
    # Rounding to whole pixels moves the bounds a little.
    assert min(fractions) > 0.08 * 0.9
    assert max(fractions) <= 1.0
    assert abs(np.mean(flips) - 0.5) < 0.04
    # Compare the distribution with torchvision's own sampler (its own RNG).
    torch.manual_seed(0)
    ref = [
        T.RandomResizedCrop.get_params(torch.empty(3, h, w), list(SCALE), list(RATIO))
        for _ in range(3000)
    ]
    ref_frac = [c[2] * c[3] / (h * w) for c in ref]
    ref_aspect = [math.log(c[3] / c[2]) for c in ref]
    assert abs(np.mean(fractions) - np.mean(ref_frac)) < 0.03
    assert abs(np.mean(log_aspects) - np.mean(ref_aspect)) < 0.03
    assert abs(np.std(log_aspects) - np.std(ref_aspect)) < 0.03


def test_fallback_is_torchvision_center_crop() -> None:
    # A 10 x 1000 strip cannot hold 90-100% of its area at aspect <= 4/3: every try fails.
    (top, left, h, w), _ = sample_view("replay", 0, 0, 0, 10, 1000, (0.9, 1.0), RATIO)
    assert (top, left, h, w) == (0, (1000 - 13) // 2, 10, 13)


def test_eval_view_is_a_centered_square() -> None:
    # min side 300 * 0.875 = 262.5 -> 262 (round half to even, as Python); (451-262)/2 = 94.5 -> 94
    assert sample_view("eval", 0, 0, 5, 300, 451, crop_pct=0.875) == ((19, 94, 262, 262), False)
    assert sample_view("eval", 0, 0, 5, 100, 80, crop_pct=1.0) == ((10, 0, 80, 80), False)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"mode": "random"}, "Unknown view mode"),
        ({"seed": -1}, "must be >= 0"),
        ({"height": 0}, "must be positive"),
    ],
)
def test_sample_view_rejects(kwargs: dict, fragment: str) -> None:
    args = {"mode": "replay", "seed": 0, "v": 0, "i": 0, "height": 10, "width": 10} | kwargs
    with pytest.raises(ConfigError, match=fragment):
        sample_view(**args)


def _image(h: int = 30, w: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_replay_without_resampling_is_an_exact_slice() -> None:
    img = _image()
    arr = np.asarray(img)
    out = replay_view(img, (3, 5, 12, 12), False, 12)
    assert out.dtype == torch.uint8
    assert out.shape == (3, 12, 12)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), arr[3:15, 5:17])
    flipped = replay_view(img, (3, 5, 12, 12), True, 12)
    assert np.array_equal(flipped.permute(1, 2, 0).numpy(), arr[3:15, 5:17][:, ::-1])


@pytest.mark.parametrize(
    ("size", "interpolation"), [(7, "bilinear"), (25, "bilinear"), (9, "bicubic")]
)
def test_replay_resize_matches_pillow(size: int, interpolation: str) -> None:
    img = _image()
    box = (4, 6, 18, 22)
    ref = img.crop((6, 4, 6 + 22, 4 + 18)).resize(
        (size, size), {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    )
    out = replay_view(img, box, False, size, interpolation).permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(out - np.asarray(ref).astype(int))
    assert diff.max() <= 2
    assert diff.mean() < 0.6


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "nearest-exact"])
def test_replay_equals_torchvision_resized_crop_and_the_integer_reference(interpolation) -> None:
    gen = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (3, 187, 250), dtype=torch.uint8, generator=gen)
    mode = interpolation_mode(interpolation)
    avx = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    for i in range(40):
        crop, flip = sample_view("replay", 9, 0, i, 187, 250, scale=(0.01, 1.0))
        for size in (224, 40):
            got = replay_view(image, crop, flip, size, interpolation)
            want = TF.resized_crop(image, *crop, [size, size], interpolation=mode, antialias=True)
            want = TF.horizontal_flip(want) if flip else want
            if interpolation in ("bilinear", "bicubic"):
                top, left, h, w = crop
                exact = resize_uint8_exact(
                    image[:, top : top + h, left : left + w], (size, size), interpolation
                )
                assert torch.equal(got, TF.horizontal_flip(exact) if flip else exact)
            if avx or interpolation != "bilinear":  # torchvision's own uint8 path
                assert torch.equal(got, want), (i, size)


_REPLAY_SCRIPT = """
import sys, torch
from pld_pipeline.views import replay_view, sample_view
image = torch.randint(0, 256, (3, 187, 250), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
views = [replay_view(image, *sample_view("replay", 3, 0, i, 187, 250), 64, mode)
         for i in range(8) for mode in ("bilinear", "bicubic")]
torch.save((torch.backends.cpu.get_cpu_capability(), torch.stack(views)), sys.argv[1])
"""


def test_replay_gives_the_same_pixels_on_every_cpu_capability(tmp_path) -> None:
    """A teacher on an AVX-512 host and a student on a CPU without AVX2 see the same pixels
    (torchvision's resize would take a float path there, a level off)."""
    results = {}
    for capability in ("default", None):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        out = tmp_path / f"{capability}.pt"
        subprocess.run(
            [sys.executable, "-c", _REPLAY_SCRIPT, str(out)], env=env, check=True, timeout=120
        )
        results[capability] = torch.load(out)
    assert results["default"][0] == "DEFAULT"
    assert torch.equal(results["default"][1], results[None][1]), results[None][0]


def test_replay_accepts_pil_or_tensor_and_checks_the_box() -> None:
    img = _image()
    as_tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    assert torch.equal(
        replay_view(img, (1, 2, 20, 25), True, 11), replay_view(as_tensor, (1, 2, 20, 25), True, 11)
    )
    with pytest.raises(ViewError, match="does not fit an image of 30x40"):
        replay_view(img, (20, 0, 11, 10), False, 8)
    with pytest.raises(ViewError):
        replay_view(as_tensor.float(), (0, 0, 5, 5), False, 8)


def test_normalize_batch_matches_float64() -> None:
    images = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = (
        images.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    ) / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    out = normalize_batch(images, mean, std, "cpu", channels_last=True)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.double(), ref, atol=1e-5)
