"""Synthetic teacher records with realistic values, for tests, benchmarks and demos.

Logits are Gaussian with the true class raised by a random margin, so the teacher is
right most of the time and the top-K log-probabilities look like a trained model's
(sorted, a few large, a long tail). Records of (view, start) are a pure function of
(seed, view, start, stop): any process regenerates the same shard.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storage.manifest import Manifest, TeacherInfo, ViewInfo


def make_manifest(
    num_samples: int = 100,
    num_classes: int = 10,
    k: int = 5,
    fmt: str = "topk",
    num_views: int = 2,
    shard_size: int = 16,
    temperatures: tuple[float, ...] = (1.0, 4.0),
    **overrides: Any,
) -> Manifest:
    """A small valid manifest; ``overrides`` replace top-level fields."""
    teacher = TeacherInfo(
        name="synthetic",
        weights_source="none",
        weights_sha256="0" * 64,
        num_classes=num_classes,
        input_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        interpolation="bilinear",
    )
    views = ViewInfo(mode="replay" if num_views > 1 else "eval", num_views=num_views, seed=0)
    fields = dict(
        teacher=teacher,
        views=views,
        format=fmt,
        k=k,
        temperatures=temperatures,
        dataset_fingerprint="f" * 64,
        num_samples=num_samples,
        shard_size=shard_size,
        producer="synthetic",
    )
    fields.update(overrides)
    return Manifest(**fields)


def make_labels(num_samples: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Labels [N] int32 uniform in [0, C)."""
    return np.random.default_rng([seed, 7]).integers(0, num_classes, num_samples).astype(np.int32)


def make_logits(
    labels: np.ndarray, num_classes: int, view: int, start: int, seed: int = 0
) -> np.ndarray:
    """Teacher-like logits [n, C] float32 for ``labels`` [n]."""
    n = len(labels)
    rng = np.random.default_rng([seed, view, start, n])
    z = rng.standard_normal((n, num_classes), dtype=np.float32) * 2.0
    z[np.arange(n), labels] += rng.uniform(3.0, 15.0, n).astype(np.float32)
    return z


def records_from_logits(
    manifest: Manifest,
    view: int,
    start: int,
    z: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Records for ``CacheWriter.write_shard`` computed from logits [n, C] float32."""
    n, c = z.shape
    rng = np.random.default_rng([seed, view, start, n, 1])
    zmax = z.max(axis=1, keepdims=True).astype(np.float64)
    lse = np.stack(
        [
            (zmax[:, 0] / t + np.log(np.exp((z - zmax) / t).sum(axis=1)))
            for t in manifest.temperatures
        ],
        axis=1,
    ).astype(np.float32)
    records = {
        "lse": lse,
        "gt_logit": z[np.arange(n), labels].astype(np.float32),
        "crop": np.stack(
            [
                rng.integers(0, 50, n),
                rng.integers(0, 50, n),
                rng.integers(8, 200, n),
                rng.integers(8, 200, n),
            ],
            axis=1,
        ),
        "flip": rng.integers(0, 2, n).astype(bool),
    }
    if view == 0:
        records["hw"] = rng.integers(64, 512, (n, 2))
    if manifest.format == "full":
        records["logits"] = z
        return records
    k = manifest.k
    lse1 = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    part = np.argpartition(-z, k - 1, axis=1)[:, :k] if k < c else np.tile(np.arange(c), (n, 1))
    vals = np.take_along_axis(z, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    records["topk_idx"] = np.take_along_axis(part, order, axis=1).astype(np.int64)
    records["topk_logp"] = (np.take_along_axis(vals, order, axis=1) - lse1[:, None]).astype(
        np.float32
    )
    return records


def make_records(
    manifest: Manifest, view: int, start: int, stop: int, labels: np.ndarray, seed: int = 0
) -> dict[str, np.ndarray]:
    """Records of samples [start, stop) of ``view``; ``labels`` is the full [N] array."""
    z = make_logits(labels[start:stop], manifest.num_classes, view, start, seed)
    return records_from_logits(manifest, view, start, z, labels[start:stop], seed)
