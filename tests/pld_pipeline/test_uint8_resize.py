"""The exact uint8 resize (what GPU decoding cuts views with) against torch's CPU uint8 kernel.

The reference is torch's own CPU kernel (`TF.resize` on a uint8 tensor, the call
`replay_view` makes), not this module; the weights are also checked by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from pld_pipeline.uint8_resize import CropBatch, axis_taps, resize_crops_exact, resize_uint8_exact

MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def test_weights_by_hand():
    # Bilinear 4 -> 2: scale 2, support 2. Output 0 centres on 1.0 and reads inputs 0..2 at
    # distances 0.5, 0.5, 1.5 (/2): filter 0.75, 0.75, 0.25, normalised 3/7, 3/7, 1/7.
    # Largest weight 3/7: precision 16 (3/7 * 2**17 would pass int16), round(2**16 * w).
    taps = axis_taps(4, 2, "bilinear")
    assert taps.precision == 16
    assert taps.first.tolist() == [0, 1]
    assert taps.weights[:, :3].tolist() == [[28087, 28087, 9362], [9362, 28087, 28087]]
    assert not taps.weights[:, 3:].any()


def test_a_hand_computed_image():
    # One row 0, 70, 140, 210 resized 4 -> 2 with the weights above:
    # (28087*0 + 28087*70 + 9362*140 + 2**15) >> 16 = 50; (9362*70 + 28087*140 + 28087*210 + 2**15) >> 16 = 160.
    row = torch.tensor([[[0, 70, 140, 210]]], dtype=torch.uint8)
    assert resize_uint8_exact(row, (1, 2), "bilinear").tolist() == [[[50, 160]]]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_equals_torch_cpu_uint8_kernel_on_random_sizes(mode):
    rng = np.random.default_rng(3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(120):
        h, w = (int(v) for v in rng.integers(2, 520, 2))
        out_h = int(rng.choice([224, 32, 300, rng.integers(2, 400)]))
        out_w = out_h if rng.random() < 0.7 else int(rng.integers(2, 400))
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        if rng.random() < 0.4:  # hard edges: where bicubic overshoots and is clipped
            image = (image // 128 * 255).to(torch.uint8)
        want = TF.resize(image, [out_h, out_w], interpolation=MODES[mode], antialias=True)
        got = resize_uint8_exact(image, (out_h, out_w), mode)
        assert got.dtype == torch.uint8
        assert torch.equal(got, want), (mode, (h, w), (out_h, out_w))


def test_float_input_and_one_axis_unchanged():
    image = torch.randint(
        0, 256, (3, 50, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    want = TF.resize(image, [224, 224], interpolation=MODES["bicubic"], antialias=True)
    assert torch.equal(resize_uint8_exact(image.float(), (224, 224), "bicubic"), want)


def test_unknown_filter_is_refused():
    with pytest.raises(ValueError, match="bilinear"):
        axis_taps(10, 5, "lanczos")


@pytest.mark.parametrize("chunk_bytes", [1, 512 << 20])  # one image per chunk, or all at once
def test_many_crops_of_many_images_equal_the_kernel_crop_by_crop(chunk_bytes):
    rng = np.random.default_rng(7)
    gen = torch.Generator().manual_seed(7)
    images = [
        torch.randint(0, 256, (3, int(h), int(w)), dtype=torch.uint8, generator=gen)
        for h, w in rng.integers(8, 160, (5, 2))
    ]
    owner, crops = [], []
    for i in rng.integers(0, 5, 23):  # uneven views per image, in no order
        h, w = images[i].shape[1:]
        ch, cw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
        owner.append(int(i))
        crops.append([int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw])
    for mode in MODES:
        got = resize_crops_exact(
            images,
            CropBatch(np.array(owner), np.array(crops)),
            (24, 40),
            mode,
            max_chunk_bytes=chunk_bytes,
        )
        for n, (i, (top, left, h, w)) in enumerate(zip(owner, crops, strict=True)):
            crop = images[i][:, top : top + h, left : left + w]
            want = TF.resize(crop, [24, 40], interpolation=MODES[mode], antialias=True)
            assert torch.equal(got[n], want), (mode, n)
