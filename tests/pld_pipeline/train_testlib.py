"""Helpers of the training tests: a learnable tiny image folder, tiny caches written by an
in-test teacher pass, and small CPU TrainConfigs (the fixtures in conftest.py use them).

- `build_color_folder(root, per_class, seed)`: 3 classes, each with its own base colour,
  sides 20-40 px, so a tiny CNN learns it in a few steps.
- `make_cache(path, root, ...)`: a cache of `root` written with storage.create/write_shard:
  every (view, sample) is replayed with views.sample_view + replay_view and scored by
  `oracle_logits` (a fixed function of the pixels plus the label).
- `train_config(...)`: a TrainConfig for those, CPU, no workers, tiny student.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import storage
from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.teacher.outputs import logits_to_records
from pld_pipeline.views import normalize_batch, replay_view, sample_view

COLORS = {"blue": (40, 60, 200), "green": (40, 190, 60), "red": (210, 50, 40)}
TEACHER_CLASSES = 6  # the teacher knows more classes than the folder uses
TEACHER_SIZE = 12
STUDENT = "pld_pipeline.demo.small_models:tiny_cnn"


def build_color_folder(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            h, w = (int(x) for x in rng.integers(20, 41, size=2))
            arr = np.asarray(color, np.float64) + rng.normal(0, 40, size=(h, w, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
                root / name / f"img_{j:02d}.png"
            )
    return root


def oracle_logits(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A deterministic teacher: [B, 3, S, S] float -> [B, C] logits (label boosted by 4)."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(3, TEACHER_CLASSES, generator=g, dtype=torch.float64)
    z = pixels.double().mean(dim=(2, 3)) @ w
    z[torch.arange(len(labels)), labels] += 4.0
    return z.float()


def make_cache(
    path: Path,
    root: Path,
    fmt: str = "topk",
    k: int = 4,
    mode: str = "replay",
    num_views: int = 2,
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0),
    shard_size: int = 10,
    views_done: int | None = None,
    teacher=None,  # callable (x [B,3,S,S] float, labels [B]) -> logits [B, C]
    **manifest_fields,  # e.g. record_precision="q8", schema_version=2
) -> Path:
    """Write a complete cache of `root` (or only the first `views_done` views).

    `teacher` defaults to `oracle_logits`; its input is normalised with mean 0.5, std 0.25.
    """
    teacher = teacher or oracle_logits
    images = ImageFolderDataset(root)
    manifest = storage.Manifest(
        teacher=storage.TeacherInfo(
            name="oracle",
            weights_source="none",
            weights_sha256="0" * 64,
            num_classes=TEACHER_CLASSES,
            input_size=TEACHER_SIZE,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            interpolation="bilinear",
        ),
        views=storage.ViewInfo(mode=mode, num_views=num_views, seed=3),
        format=fmt,
        k=k if fmt == "topk" else TEACHER_CLASSES,
        temperatures=temperatures,
        dataset_fingerprint=images.fingerprint(),
        num_samples=len(images),
        shard_size=shard_size,
        **manifest_fields,
    )
    writer = storage.create(path, manifest, images.keys, images.labels)
    for v in range(num_views if views_done is None else views_done):
        for s in range(writer.num_shards):
            start, stop = writer.shard_range(s)
            crops, flips, hws, pixels = [], [], [], []
            for i in range(start, stop):
                img = images.load_rgb(i)
                crop, flip = sample_view(mode, 3, v, i, img.height, img.width)
                crops.append(crop)
                flips.append(flip)
                hws.append((img.height, img.width))
                pixels.append(replay_view(img, crop, flip, TEACHER_SIZE))
            x = normalize_batch(torch.stack(pixels), (0.5,) * 3, (0.25,) * 3)
            labels = torch.as_tensor(images.labels[start:stop], dtype=torch.int64)
            with torch.no_grad():
                logits = teacher(x, labels)
            rec = logits_to_records(logits, labels, fmt, k, temperatures)
            records = {name: t.numpy() for name, t in rec.items()}
            records.update(crop=np.asarray(crops), flip=np.asarray(flips), hw=np.asarray(hws))
            writer.write_shard(v, s, records)
    return path


def train_config(cache: Path, root: Path, run_dir: Path, **overrides) -> TrainConfig:
    """A small CPU TrainConfig; `overrides` may set nested sections as dicts."""
    data = {
        "cache": str(cache),
        "dataset_root": str(root),
        "run_dir": str(run_dir),
        "student": {"name": STUDENT, "image_size": 16},
        "loss": {"name": "pld"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "epochs": 2,
        "batch_size": 8,
        "device": "cpu",
        "num_workers": 0,
        "seed": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return TrainConfig.model_validate(data)
