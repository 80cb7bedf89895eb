"""On a CUDA GPU: nvJPEG decoding, GPU views, a training step without host syncs.

Skipped without CUDA; `bench/gpu.sh` runs them (`pytest -m cuda`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from train_testlib import make_cache, train_config

import storage
from pld_pipeline.configs.train import OptimConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.decoding import decode_rgb_bytes
from pld_pipeline.demo.small_models import tiny_cnn
from pld_pipeline.losses import LOSS_NAMES, make_loss
from pld_pipeline.student.data.cached_dataset import (
    SampledViews,
    StudentViewDataset,
    ViewBatch,
    collate_views,
)
from pld_pipeline.student.data.gpu_decode import EncodedViewDataset, GpuViewDecoder, collate_encoded
from pld_pipeline.student.run.optim import make_optimizer, make_scheduler
from pld_pipeline.student.run.placement import Placement
from pld_pipeline.student.run.train import Step, fit, train_step
from pld_pipeline.views import replay_view, replay_view_on_device, sample_view

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")


def _jpeg(name: str, **options) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((500, 375)).save(
        buf, "JPEG", **options
    )
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def test_nvjpeg_pixels_are_close_to_the_cpu_decoders():
    files = [_jpeg(n, quality=90) for n in ("coffee", "astronaut", "chelsea", "rocket")]
    files.append(_jpeg("coffee", quality=90, progressive=True))
    decoder = GpuViewDecoder(CUDA, 224)
    gpu = decoder.decode(files, range(len(files)))
    for data, image in zip(files, gpu, strict=True):
        cpu = decode_rgb_bytes(data, "x.jpg")
        assert image.is_cuda
        assert image.shape == cpu.shape
        diff = (image.cpu().int() - cpu.int()).abs().float()
        # Other IDCT and chroma upsampling: small differences, never a wrong image.
        assert float(diff.mean()) < 2.0, float(diff.mean())
    assert decoder.cpu_fallbacks == 0


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_gpu_views_equal_replay_view_of_the_same_pixels(interpolation):
    pixels = decode_rgb_bytes(_jpeg("astronaut", quality=90), "x.jpg")
    image = pixels.to(CUDA)
    for i in range(50):
        crop, flip = sample_view("replay", 1, 0, i, 375, 500)
        a = replay_view(pixels, crop, flip, 224, interpolation)
        b = replay_view_on_device(image, crop, flip, 224, interpolation)
        assert b.is_cuda
        assert torch.equal(a, b.cpu()), i


def test_encoded_batches_decode_on_the_gpu_like_the_cpu_pipeline(tiny_imagefolder):
    images = ImageFolderDataset(tiny_imagefolder)
    items = [(i, (SampledViews("replay", 3, 0), SampledViews("replay", 3, 1))) for i in range(12)]
    want = collate_views([StudentViewDataset(images, 32)[it] for it in items])
    enc = EncodedViewDataset(images, 32)
    got = GpuViewDecoder(CUDA, 32)(collate_encoded([enc[it] for it in items]))
    assert got.images.is_cuda
    assert torch.equal(got.index, want.index)
    diff = (got.images.cpu().int() - want.images.int()).abs().float()
    assert float(diff.mean()) < 2.0


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_a_training_step_never_waits_for_the_gpu(loss, replay_cache):
    slab = storage.open_cache(replay_cache).load_view(0)
    torch.manual_seed(0)
    model = tiny_cnn(num_classes=6).to(CUDA, memory_format=torch.channels_last)
    cfg = OptimConfig(name="sgd", lr=0.05, clip_grad_norm=1.0)
    optimizer = make_optimizer(model, cfg)
    place = Placement(CUDA, torch.bfloat16, True, (0.5,) * 3, (0.25,) * 3)
    step = Step(model, make_loss(loss), optimizer, make_scheduler(optimizer, cfg, 1, 10),
                torch.amp.GradScaler("cuda", enabled=False), place, 1.0, "compact")  # fmt: skip

    def batch(j: int) -> ViewBatch:
        index = torch.arange(8 * j, 8 * j + 8) % len(slab)
        return ViewBatch(
            torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8).pin_memory(),
            torch.as_tensor(slab.label[index.numpy()], dtype=torch.int64).pin_memory(),
            index, torch.zeros(8, dtype=torch.int64),
        )  # fmt: skip

    train_step(step, batch(0), [slab])  # warm-up: constants moved to the GPU once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for j in range(1, 4):
            train_step(step, batch(j), [slab])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("decode", ["cpu", "cuda", "cpu-crop-on-cuda"])
def test_fit_on_the_gpu_with_two_views_per_image(decode, tiny_imagefolder, tmp_path: Path):
    cache = make_cache(tmp_path / "c.zarr", tiny_imagefolder, num_views=3)
    cfg = train_config(cache, tiny_imagefolder, tmp_path / "r", device="cuda", decode=decode,
                       views_per_image=2, batch_size=4, epochs=2, num_workers=2)  # fmt: skip
    r = fit(cfg)
    assert r.samples_seen == 2 * 12 * 2
    assert all(h["nonfinite_steps"] == 0 for h in r.history)
    assert np.isfinite([h["train_loss"] for h in r.history]).all()
