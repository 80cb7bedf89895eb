"""GPU decoding's crop math and plumbing, run on the CPU: same boxes, same pixels.

`GpuViewDecoder` runs unchanged on the CPU (torchvision's batched `decode_jpeg` then decodes
with libjpeg-turbo, the pixels the teacher saw), so everything but nvJPEG itself is
tested here: the boxes the workers hand over, the device crop-and-resize against
`replay_view`, the CPU fallbacks, the background thread. tests/pld_pipeline/test_cuda.py
runs the real nvJPEG path when a GPU is present.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from train_testlib import make_cache

import pld_pipeline.student.data.gpu_decode as gpu_decode
import storage
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import ViewError
from pld_pipeline.student.data.cached_dataset import (
    SampledViews,
    StoredViews,
    StudentViewDataset,
    Unreadable,
    collate_views,
)
from pld_pipeline.student.data.gpu_decode import (
    DecodedViewDataset,
    DeviceBatches,
    EncodedViewDataset,
    GpuViewDecoder,
    collate_encoded,
)
from pld_pipeline.views import (
    replay_view,
    replay_view_on_device,
    replay_views_on_device,
    sample_view,
)

CPU = torch.device("cpu")


def _photo(name: str, size=(500, 375)) -> torch.Tensor:
    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size)
    return TF.pil_to_tensor(img)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "nearest-exact"])
def test_device_replay_equals_replay_view(interpolation):
    for photo in ("coffee", "astronaut", "rocket"):
        pixels = _photo(photo, (250, 188))
        for i in range(16):
            crop, flip = sample_view("replay", 5, 0, i, 188, 250, scale=(0.02, 1.0))
            for size in (112, 24, 240):  # down- and upscaling
                want = replay_view(pixels, crop, flip, size, interpolation)
                got = replay_view_on_device(pixels, crop, flip, size, interpolation)
                assert got.dtype == torch.uint8
                assert torch.equal(got, want), (photo, i, size)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_batched_device_replay_equals_replay_view_per_view(interpolation):
    photos = [_photo(name, size) for name, size in (("coffee", (250, 188)), ("rocket", (120, 200)))]
    owner, crops, flips = [], [], []
    for i in range(10):
        k = i % 2
        crop, flip = sample_view("replay", 2, 1, i, *photos[k].shape[1:], scale=(0.05, 1.0))
        owner.append(k)
        crops.append(crop)
        flips.append(flip)
    assert any(flips)
    assert not all(flips)
    got = replay_views_on_device(photos, owner, crops, flips, 56, interpolation)
    for n, (k, crop, flip) in enumerate(zip(owner, crops, flips, strict=True)):
        assert torch.equal(got[n], replay_view(photos[k], crop, flip, 56, interpolation)), n


def test_device_replay_refuses_a_float_image():
    with pytest.raises(ViewError, match="uint8"):
        replay_view_on_device(torch.zeros(3, 8, 8), (0, 0, 8, 8), False, 4)


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory, tiny_imagefolder) -> Path:
    return make_cache(tmp_path_factory.mktemp("gd") / "c.zarr", tiny_imagefolder, num_views=2)


def _items(tiny_imagefolder, mixed_cache):
    images = ImageFolderDataset(tiny_imagefolder)
    reader = storage.open_cache(mixed_cache)
    refs = [StoredViews(s.crop, s.flip).refs() for s in (reader.load_view(0), reader.load_view(1))]
    own = SampledViews("replay", 7, 3)  # the student's own crop: boxes from the JPEG header
    return images, [(i, (refs[0][i], refs[1][i], own)) for i in range(len(images))]


def test_decoder_gives_the_cpu_pipelines_views(tiny_imagefolder, mixed_cache):
    images, items = _items(tiny_imagefolder, mixed_cache)
    cpu = StudentViewDataset(images, 20, teacher_size=12)
    enc = EncodedViewDataset(images, 20, teacher_size=12)
    encoded = [enc[item] for item in items]
    # JPEGs with 3 or 1 components go to the decoder; CMYK and non-JPEG files are done
    # in the worker.
    on_worker = {images.keys[e.index] for e in encoded if e.jpeg is None}
    assert on_worker == {k for k in images.keys if not k.endswith(".jpg")} | {"cup/coffee_cmyk.jpg"}
    want = collate_views([cpu[item] for item in items])
    got = GpuViewDecoder(CPU, 20, teacher_size=12)(collate_encoded(encoded))
    assert torch.equal(got.index, want.index)
    assert torch.equal(got.slot, want.slot)
    assert torch.equal(got.labels, want.labels)
    for name in ("images", "teacher_images"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape
        assert a.dtype == torch.uint8
        assert torch.equal(a, b)  # libjpeg-turbo here: the pixels, boxes and resize are the same
    for e, (i, refs) in zip(encoded, items, strict=True):  # the boxes are the views' own
        h, w = images.load_tensor(i).shape[1:]
        boxes = [r.get(i, h, w) if isinstance(r, SampledViews) else r for r in refs]
        assert e.crops.tolist() == [list(c) for c, _ in boxes]
        assert e.flips.tolist() == [f for _, f in boxes]


def test_cpu_decode_with_device_crops_gives_the_cpu_pipelines_views(tiny_imagefolder, mixed_cache):
    """decode: cpu-crop-on-cuda: workers decode every file (JPEG, CMYK, PNG, ...) and hand over
    the whole image; the device cuts the views, equal to the CPU pipeline's."""
    images, items = _items(tiny_imagefolder, mixed_cache)
    cpu = StudentViewDataset(images, 20, teacher_size=12, teacher_interpolation="bicubic")
    dec = DecodedViewDataset(images, 20, teacher_size=12, teacher_interpolation="bicubic")
    decoded = [dec[item] for item in items]
    assert all(e.jpeg is None and e.pixels is None for e in decoded)
    assert all(torch.equal(e.decoded, images.load_tensor(e.index)) for e in decoded)
    want = collate_views([cpu[item] for item in items])
    decoder = GpuViewDecoder(CPU, 20, teacher_size=12, teacher_interpolation="bicubic")
    got = decoder(collate_encoded(decoded))
    assert torch.equal(got.index, want.index)
    assert torch.equal(got.slot, want.slot)
    assert torch.equal(got.labels, want.labels)
    assert torch.equal(got.images, want.images)
    assert torch.equal(got.teacher_images, want.teacher_images)


def test_decoded_images_cross_dataloader_worker_processes(tiny_imagefolder, mixed_cache):
    """cpu-crop-on-cuda as training runs it: DataLoader worker processes decode and hand
    whole images over; the cut views equal the CPU pipeline's, in the same order."""
    images, items = _items(tiny_imagefolder, mixed_cache)
    loader = torch.utils.data.DataLoader(
        DecodedViewDataset(images, 20), batch_size=4, sampler=items, num_workers=2,
        collate_fn=collate_encoded, multiprocessing_context="spawn",
    )  # fmt: skip
    decoder = GpuViewDecoder(CPU, 20)
    got = torch.cat([decoder(batch).images for batch in loader])
    cpu = StudentViewDataset(images, 20)
    want = torch.cat([collate_views([cpu[item] for item in items[k : k + 4]]).images
                      for k in range(0, len(items), 4)])  # fmt: skip
    assert torch.equal(got, want)


def test_a_file_the_decoder_refuses_is_decoded_on_the_cpu(
    tiny_imagefolder, mixed_cache, monkeypatch, caplog
):
    images, items = _items(tiny_imagefolder, mixed_cache)
    enc = EncodedViewDataset(images, 20)
    batch = collate_encoded([enc[item] for item in items])
    refused = images.keys.index("cat/chelsea.jpg")
    real = gpu_decode.decode_jpeg

    def picky(data, **kwargs):
        one = [data] if isinstance(data, torch.Tensor) else data
        if any(torch.equal(d, batch.images[refused].jpeg) for d in one):
            raise RuntimeError("nvjpeg: unsupported JPEG")
        return real(data, **kwargs)

    monkeypatch.setattr(gpu_decode, "decode_jpeg", picky)
    decoder = GpuViewDecoder(CPU, 20)
    with caplog.at_level(logging.WARNING, logger="pld_pipeline"):
        got = decoder(batch)
    assert decoder.cpu_fallbacks == 1
    assert f"sample {refused}" in caplog.text
    want = collate_views([StudentViewDataset(images, 20)[item] for item in items])
    assert int((got.images.int() - want.images.int()).abs().max()) <= 1


def test_device_batches_decode_ahead_in_order_and_pass_errors_on(tiny_imagefolder, mixed_cache):
    images, items = _items(tiny_imagefolder, mixed_cache)
    enc = EncodedViewDataset(images, 16)
    batches = [collate_encoded([enc[it] for it in items[j : j + 3]]) for j in range(0, 12, 3)]
    decoder = GpuViewDecoder(CPU, 16)
    direct = [decoder(b) for b in batches]
    ahead = list(DeviceBatches(decoder, ahead=2)(iter(batches)))
    assert len(ahead) == 4
    for a, b in zip(ahead, direct, strict=True):
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.index, b.index)

    def failing():
        yield batches[0]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(DeviceBatches(decoder)(failing()))
    consumer = DeviceBatches(decoder, ahead=1)(iter(batches))
    next(consumer)
    consumer.close()  # the consumer leaves early: the thread stops, nothing hangs


def test_damaged_file_is_left_out_with_its_key_and_reason(tiny_imagefolder_corrupt):
    images = ImageFolderDataset(tiny_imagefolder_corrupt)
    i = images.keys.index("cup/zz_corrupt.jpg")
    enc = EncodedViewDataset(images, 16)
    item = enc[(i, (SampledViews("eval", 0, 0),))]
    assert item == Unreadable(i, "cup/zz_corrupt.jpg", item.reason)
    assert item.reason.startswith("cannot be decoded")
    good = enc[(0, (SampledViews("eval", 0, 0),))]
    batch = GpuViewDecoder(CPU, 16)(collate_encoded([item, good]))
    assert batch.index.tolist() == [0]
    assert batch.unreadable == (item,)


def test_collated_encoded_rows_are_image_major():
    crops = torch.zeros(3, 4, dtype=torch.int64)
    item = gpu_decode.EncodedImage(None, torch.zeros(3, 3, 4, 4, dtype=torch.uint8), None,
                                   crops, torch.zeros(3, dtype=torch.bool), 2, 9)  # fmt: skip
    other = item._replace(label=1, index=4)
    batch = collate_encoded([item, other])
    assert batch.index.tolist() == [9, 9, 9, 4, 4, 4]
    assert batch.labels.tolist() == [2] * 3 + [1] * 3
    assert batch.slot.tolist() == [0, 1, 2] * 2
    assert np.array_equal(GpuViewDecoder(CPU, 4)(batch).images.numpy(), np.zeros((6, 3, 4, 4)))
