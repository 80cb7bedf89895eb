"""Every odd file of a real image folder through every decode path: one answer per file.

The corpus (`odd_files_testlib.write_corpus`) holds one file of each kind; each must be
decoded (the same pixels in the teacher pass and in every student path, equal to PIL's
own decode with the documented rules: EXIF orientation ignored, alpha over white, 16-bit
scaled by 1/257), recorded as bad (with its reason, shown by inspect, skipped by
training), or not listed at all. Never a traceback, a hang or a shifted label. The same
corpus goes through the installed CLI with Dask in tests/flows/test_odd_files_cli.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from odd_files_testlib import (
    BAD,
    DECODED,
    NON_UTF8_KEY,
    NON_UTF8_NAME,
    NOT_LISTED,
    ODD,
    Corpus,
    no_dac_prefix,
    reference_pixels,
    write_corpus,
)
from PIL import Image

import storage
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.decoding import decode_rgb, decode_rgb_bytes, read_bytes
from pld_pipeline.errors import BadImageError
from pld_pipeline.student.data.cached_dataset import (
    StoredViews,
    StudentViewDataset,
    Unreadable,
    collate_views,
    good_indices,
)
from pld_pipeline.student.data.gpu_decode import (
    DecodedViewDataset,
    EncodedViewDataset,
    GpuViewDecoder,
    collate_encoded,
)
from pld_pipeline.student.run.train import fit
from pld_pipeline.teacher import cache_build, cache_report, replay_check
from pld_pipeline.teacher._view_images import TeacherViewImages
from pld_pipeline.teacher.compute import compute_views
from pld_pipeline.teacher.options import PassOptions
from pld_pipeline.views import replay_view

REPO = Path(__file__).resolve().parents[2]
TEACHER = "pld_pipeline.demo.small_models:seeded_tiny_cnn"
STUDENT = "pld_pipeline.demo.small_models:tiny_cnn"
SIZE = 24  # the teacher's input side
CPU = torch.device("cpu")


def cache_config(root: Path, output: Path, **overrides) -> CacheConfig:
    data = {
        "dataset_root": str(root), "classes": "sorted-folders", "min_label_agreement": 0.0,
        "teacher": {"name": TEACHER, "num_classes": 10, "input_size": SIZE},
        "views": {"mode": "replay", "num_views": 2, "seed": 3}, "format": "topk", "k": 4,
        "temperatures": [1.0, 2.0], "shard_size": 4, "output": str(output), "batch_size": 4,
        "num_workers": 0, "device": "cpu", "replay_check_samples": 100,
        "skip_bad_images": True,
    }  # fmt: skip
    data.update(overrides)
    return CacheConfig.model_validate(data)


def listed(corpus: Corpus) -> list[str]:
    return sorted(corpus.keys(DECODED) + corpus.keys(BAD))


def close(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, alpha: bool) -> bool:
    """Equal; alpha files are within 2 levels of the float64 reference (PIL composites
    in integers, and a resize can turn a 1-level difference into 2 after rounding)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return a.shape == b.shape and np.abs(a - b).max(initial=0) <= (2 if alpha else 0)


@dataclass
class World:
    """The corpus after a teacher pass with skip_bad_images, run as the flow runs it."""

    root: Path
    corpus: Corpus
    config: CacheConfig
    outcomes: list
    report: cache_report.CacheReport
    replay: replay_check.ReplayCheck


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    base = tmp_path_factory.mktemp("odd-files")
    root = base / "data"
    corpus = write_corpus(root)
    config = cache_config(root, base / "cache.zarr")
    plan = cache_build.prepare_cache(config)  # the pass lists the folder here
    kept = corpus.vanishing.read_bytes()
    corpus.vanish()  # between listing and reading
    outcomes = [cache_build.build_shard(config, s, v) for s, v in plan.shard_tasks()]
    report = cache_report.finalize_cache(config)
    replay = replay_check.replay_check(config)
    corpus.vanishing.write_bytes(kept)  # back, so the folder is the cache's dataset again
    return World(root, corpus, config, outcomes, report, replay)


def test_listing_survives_links_loops_and_odd_names(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    data = ImageFolderDataset(corpus.root)
    assert data.keys == listed(corpus)  # loops and links to listed folders are not followed
    assert not set(corpus.keys(NOT_LISTED)) & set(data.keys)
    assert data.classes == [ODD, "plain"]
    assert data.labels.tolist() == [data.classes.index(k.split("/")[0]) for k in data.keys]
    # The non-UTF-8 name keeps its file; its key is UTF-8 (bytes written as \xNN).
    i = data.keys.index(NON_UTF8_KEY)
    assert os.fsencode(data.path(i)).endswith(NON_UTF8_NAME)
    assert data.load_tensor(i).shape[0] == 3
    storage.fingerprint(data.keys, data.sizes.tolist())  # every key encodes to UTF-8


def test_each_file_decodes_to_pils_pixels_or_fails_with_its_reason(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    data = ImageFolderDataset(corpus.root)
    corpus.vanish()
    for i, key in enumerate(data.keys):
        entry = corpus.entry(key)
        if entry.outcome == BAD:
            with pytest.raises(BadImageError) as info:
                data.load_tensor(i)
            assert entry.reason in info.value.reason, key
            assert repr(str(data.path(i))) in str(info.value)  # the message names the file
            assert "skip_bad_images: true" in str(info.value)  # and the fix
            continue
        pixels = data.load_tensor(i).permute(1, 2, 0).numpy()
        assert close(pixels, reference_pixels(data.path(i), entry), entry.alpha), key
    # EXIF orientation is ignored: the stored 40x24 (w x h) image, not the displayed 24x40.
    assert data.load_tensor(data.keys.index(f"{ODD}/exif_rotated.jpg")).shape == (3, 24, 40)
    assert data.load_tensor(data.keys.index(f"{ODD}/strip.jpg")).shape == (3, 2, 30000)
    assert data.load_tensor(data.keys.index(f"{ODD}/one_pixel.png")).tolist() == [
        [[200]], [[30]], [[90]]
    ]  # fmt: skip


def test_a_pass_without_skip_bad_images_stops_on_each_bad_file_naming_it(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    config = cache_config(corpus.root, tmp_path / "c.zarr", skip_bad_images=False)
    checked = cache_build.check_pass(config)
    data, manifest = checked.images, checked.manifest
    model = cache_build.teacher_of(config).model
    corpus.vanish()
    for key in corpus.keys(BAD):
        i = data.keys.index(key)
        workers = 2 if key.endswith("empty.jpg") else 0  # once through worker processes
        options = PassOptions(device="cpu", batch_size=2, num_workers=workers)
        with pytest.raises(BadImageError) as info:
            compute_views(model, data, manifest, [0, 1], i, i + 1, options)
        message = str(info.value)
        assert "\n" not in message
        assert f"Cannot use image {str(data.path(i))!r}: " in message, key
        assert corpus.entry(key).reason in message, key
        assert message.endswith("set skip_bad_images: true to record it as bad and go on.")


def test_the_pass_records_exactly_the_undecodable_files_with_reasons(world):
    corpus, config = world.corpus, world.config
    with storage.open_cache(config.location()) as reader:
        keys = [str(k) for k in reader.keys]
        assert keys == listed(corpus)
        folder = ImageFolderDataset(world.root)
        assert reader.labels.tolist() == folder.labels.tolist()  # no label shifted
        bad = reader.bad_mask()
        assert (bad[0] == bad[1]).all()  # an image is bad in every view
        assert [k for k, b in zip(keys, bad[0], strict=True) if b] == corpus.keys(BAD)
        assert reader.bad_samples() == corpus.keys(BAD)
        reasons = reader.bad_reasons()
        assert sorted(reasons) == corpus.keys(BAD)
        for key, reason in reasons.items():
            assert corpus.entry(key).reason in reason, key
        hw = reader.hw()
        for i, key in enumerate(keys):
            if not bad[0, i]:
                with Image.open(folder.path(i)) as img:
                    assert hw[i].tolist() == [img.height, img.width], key
    assert sorted(k for o in world.outcomes for k in o.bad_keys) == corpus.keys(BAD)
    assert world.report.bad_keys == corpus.keys(BAD)
    # Inspect: every bad key on its own line with its reason; no decodable key named.
    text = storage.inspect(config.output)
    lines = [line.strip() for line in text.splitlines()]
    for key in corpus.keys(BAD):
        assert any(line.startswith(f"{key}: ") for line in lines), key
    for key in corpus.keys(DECODED):
        assert not any(line.startswith(f"{key}: ") for line in lines), key
    # The replay check recomputed the teacher on every decodable record it picked.
    assert world.replay.passed
    assert not world.replay.unreadable
    assert world.replay.samples == len(corpus.keys(DECODED))


def test_teacher_and_every_student_path_see_the_same_pixels(world):
    """Teacher pass input (TeacherViewImages) == student paths on the cached boxes, at the
    teacher's size: `decode: cpu` (StudentViewDataset), the CPU side of cpu-crop-on-cuda
    (DecodedViewDataset) and `decode: cuda` with its CPU decoding (EncodedViewDataset; the
    decoder runs on the CPU here), and == PIL's own decode replayed on the same boxes."""
    corpus = world.corpus
    images = ImageFolderDataset(world.root)
    with storage.open_cache(world.config.location()) as reader:
        manifest, slabs = reader.manifest, [reader.load_view(v) for v in range(2)]
        good = good_indices(reader.bad_mask(), reader.num_samples)
    assert [images.keys[i] for i in good] == corpus.keys(DECODED)  # what training uses
    interp = manifest.teacher.interpolation
    cpu = StudentViewDataset(images, SIZE, interp)
    dec = DecodedViewDataset(images, SIZE, interp)
    enc = EncodedViewDataset(images, SIZE, interp)
    decoder = GpuViewDecoder(CPU, SIZE, interp)
    for v, slab in enumerate(slabs):
        teacher = TeacherViewImages(images, manifest, [v], 0, len(images), skip_bad_images=True)
        refs = StoredViews(slab.crop, slab.flip).refs()
        for i in good.tolist():
            key, entry = images.keys[i], corpus.entry(images.keys[i])
            seen = teacher[i]
            assert not seen["bad"]
            assert seen["crop"][0].tolist() == list(refs[i][0])
            assert bool(seen["flip"][0]) == refs[i][1]
            want = seen["image"]  # [1, 3, S, S]: what the teacher was fed
            item = (i, (refs[i],))
            assert torch.equal(collate_views([cpu[item]]).images, want), key
            assert torch.equal(decoder(collate_encoded([dec[item]])).images, want), key
            assert torch.equal(decoder(collate_encoded([enc[item]])).images, want), key
            pil = torch.from_numpy(reference_pixels(images.path(i), entry)).permute(2, 0, 1)
            assert close(replay_view(pil, *refs[i], SIZE, interp)[None], want, entry.alpha), key
    # The files the pass recorded as bad: every student path leaves them out, named.
    for key in corpus.keys(BAD):
        if key.endswith("vanishes.jpg"):
            continue  # back on disk by now
        i = images.keys.index(key)
        item = (i, (refs[0],))
        for dataset in (cpu, dec):
            assert dataset[item] == Unreadable(i, key, dataset[item].reason)
        batch = decoder(collate_encoded([enc[item], enc[(good[0], (refs[good[0]],))]]))
        assert batch.index.tolist() == [int(good[0])]
        assert [u.index for u in batch.unreadable] == [i]


def test_training_skips_images_that_became_unreadable_and_validation_names_them(
    world, tmp_path, caplog
):
    """decode: cpu, one image of two views per loader batch (so no image falls in a dropped
    last batch), views spread over neighbouring steps: one good file is damaged on disk
    before the run (same size, so the dataset check passes), another is deleted after
    epoch 0. Every epoch finishes; each is warned about by key and counted. Validation on
    the corpus itself leaves out every file it cannot decode."""
    root = tmp_path / "data"
    shutil.copytree(world.root, root, symlinks=True)
    damaged, deleted = f"{ODD}/progressive.jpg", f"{ODD}/cmyk.jpg"
    size = (root / damaged).stat().st_size
    (root / damaged).write_bytes(b"\0" * size)

    def delete_after_first_epoch(record: dict) -> None:
        if record["epoch"] == 0:
            (root / deleted).unlink()

    config = {
        "cache": world.config.output, "dataset_root": str(root), "classes": "sorted-folders",
        "val_root": str(root), "run_dir": str(tmp_path / "run"),
        "student": {"name": STUDENT, "image_size": 16}, "loss": {"name": "pld"},
        "optim": {"name": "sgd", "lr": 0.05}, "epochs": 3, "batch_size": 2,
        "views_per_image": 2, "device": "cpu", "num_workers": 0, "decode": "cpu",
    }  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pld_pipeline"):
        result = fit(TrainConfig.model_validate(config), delete_after_first_epoch)
    per_epoch = [r["unreadable_images"] for r in result.history]
    assert per_epoch == [1, 2, 2]
    assert result.unreadable_images == 5
    assert len(result.history) == 3
    logged = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.message]
    assert sum(damaged in m for m in logged) >= 3
    assert sum(deleted in m for m in logged) >= 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["unreadable_images"] for line in lines] == [1, 2, 2]
    # Validation ran over the whole corpus (the vanished file is back, so it decodes).
    undecodable = [k for k in world.corpus.keys(BAD) if not k.endswith("vanishes.jpg")]
    final = result.history[-1]
    assert final["val_unreadable_images"] == len(undecodable) + 2
    assert final["val_samples"] == len(listed(world.corpus)) - len(undecodable) - 2
    for key in [*undecodable, damaged, deleted]:
        assert any(f"validation: skipping unreadable image {key}: " in m for m in logged), key


@pytest.mark.integration  # a subprocess
def test_a_worker_that_lists_after_a_file_vanished_reads_the_planned_keys(tmp_path):
    """A Dask worker lists the folder itself, after the plan: a vanished file must not shift
    the next samples onto other images or labels. A fresh process plays the worker."""
    corpus = write_corpus(tmp_path / "data")
    config = cache_config(corpus.root, tmp_path / "c.zarr", shard_size=64)
    plan = cache_build.prepare_cache(config)
    corpus.vanish()
    code = (
        "import json, sys; from pld_pipeline.configs.cache import CacheConfig; "
        "from pld_pipeline.teacher.cache_build import build_shard; "
        "c = CacheConfig.model_validate_json(sys.argv[1]); "
        "[build_shard(c, s, v) for s, v in json.loads(sys.argv[2])]"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    tasks = json.dumps(plan.shard_tasks())
    subprocess.run([sys.executable, "-c", code, config.model_dump_json(), tasks], env=env,
                   check=True, timeout=300)  # fmt: skip
    with storage.open_cache(config.location()) as reader:
        keys, hw, bad = [str(k) for k in reader.keys], reader.hw(), reader.bad_mask()[0]
    assert keys == listed(corpus)
    assert [k for k, b in zip(keys, bad, strict=True) if b] == corpus.keys(BAD)
    folder = ImageFolderDataset(corpus.root)  # listed after the file vanished
    for i, key in enumerate(keys):
        if not bad[i]:
            with Image.open(folder.path_of(key)) as img:
                assert hw[i].tolist() == [img.height, img.width], key


def test_the_pixel_limit_is_pils_for_every_decoder(tmp_path, monkeypatch):
    """libjpeg-turbo and nvJPEG have no decompression-bomb limit: the header is checked
    against PIL's, so a JPEG is refused exactly when PIL refuses it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2000 pixels
    small, big = tmp_path / "small.jpg", tmp_path / "big.jpg"
    Image.new("RGB", (40, 50), (9, 99, 199)).save(small)  # 2000: decodes
    Image.new("RGB", (41, 50), (9, 99, 199)).save(big)  # 2050: refused
    with Image.open(small) as img:
        img.load()
    with pytest.raises(Image.DecompressionBombError), Image.open(big) as img:
        img.load()
    assert decode_rgb(small).shape == (3, 50, 40)
    with pytest.raises(BadImageError, match="too large: 41x50 = 2,050 pixels"):
        decode_rgb(big)
    (tmp_path / "c").mkdir()
    shutil.copy(big, tmp_path / "c" / "big.jpg")
    enc = EncodedViewDataset(ImageFolderDataset(tmp_path), 8)
    assert isinstance(enc[(0, (((0, 0, 8, 8), False),))], Unreadable)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user switched the limit off
    assert decode_rgb_bytes(read_bytes(big), "big").shape == (3, 50, 41)


@pytest.mark.integration  # a subprocess
def test_no_read_permission_is_bad_where_permissions_apply(tmp_path):
    """Root reads any file (CAP_DAC_OVERRIDE), so as root the case runs in a process
    without that capability (setpriv), where permissions apply as for any user."""
    prefix = no_dac_prefix()
    if prefix is None:
        pytest.skip("running as root and setpriv cannot drop CAP_DAC_OVERRIDE here")
    path = tmp_path / "no_read.jpg"
    Image.new("RGB", (8, 8)).save(path)
    path.chmod(0)
    code = "import sys; from pld_pipeline.decoding import decode_problem; print(decode_problem(sys.argv[1]))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([*prefix, sys.executable, "-c", code, str(path)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert out.stdout.strip() == "no permission to read the file"
