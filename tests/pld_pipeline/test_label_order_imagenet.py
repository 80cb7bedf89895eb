"""A 1000-class ImageNet teacher (pretrained EfficientNet-Lite0) on a 3-class folder of real
photos: with the class list the labels are the teacher's indices and `gt_logit` is the
teacher's logit there; without it the pass stops before computing; with the sorted-folder
opt-in (labels 0, 1, 2: tench, goldfish, shark) the pass is flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from imagenet_subset import WNID_INDEX, imagenet_class_list

import storage
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.errors import ClassListError, LabelOrderError
from pld_pipeline.teacher import cache_build, cache_report
from pld_pipeline.views import replay_view

pytestmark = pytest.mark.slow  # a real 1000-class network over full-size photos
TEACHER = "pld_pipeline.teacher.zoo:efficientnet_lite0"


def config_for(root: Path, output: Path, classes) -> CacheConfig:
    return CacheConfig.model_validate({
        "dataset_root": str(root), "classes": classes, "teacher": {"name": TEACHER},
        "views": {"mode": "eval"}, "k": 5, "shard_size": 8, "output": str(output),
        "batch_size": 8, "num_workers": 0, "device": "cpu", "amp": "off",
        "replay_check_samples": 0,
    })  # fmt: skip


def run_pass(config: CacheConfig) -> dict:
    plan = cache_build.prepare_cache(config)
    for shard, views in plan.shard_tasks():
        cache_build.build_shard(config, shard, views)
    return cache_report.finalize_cache(config).as_dict()


def reference_logits(path: Path, root: Path) -> np.ndarray:
    """A separate forward of the teacher (float32: float64 takes minutes on 2 cores) on each
    record's own crop and flip, normalised by hand with TF's EfficientNet-Lite constants."""
    from PIL import Image

    model = cache_build.teacher_of(config_for(root, path, None)).model
    group = zarr.open_group(str(path), mode="r")
    batch = []
    for i, key in enumerate(group["key"][...]):
        with Image.open(root / str(key)) as img:
            pixels = replay_view(img.convert("RGB"), group["crop"][0, i], bool(group["flip"][0, i]),
                                 224, "bicubic")  # fmt: skip
        batch.append((pixels.float() - 127.0) / 128.0)
    with torch.no_grad():
        return model(torch.stack(batch)).numpy()


def test_a_class_list_gives_the_teacher_indices(wnid_photos: Path, tmp_path: Path) -> None:
    names = tmp_path / "imagenet1k_wnids.txt"  # the docs' route: a file, one wnid a line
    names.write_text("\n".join(imagenet_class_list()) + "\n")
    out = tmp_path / "cache"
    report = run_pass(config_for(wnid_photos, out, str(names)))
    group = zarr.open_group(str(out), mode="r")
    keys = [str(k) for k in group["key"][...]]
    labels = group["label"][...]
    assert labels.tolist() == [WNID_INDEX[k.split("/")[0]] for k in keys]
    ref = reference_logits(out, wnid_photos)
    np.testing.assert_allclose(group["gt_logit"][0], ref[np.arange(len(keys)), labels],
                               rtol=1e-3, atol=1e-3)  # fmt: skip
    # The teacher agrees with labels it can now read: far above 5x chance (0.005).
    assert report["label_check"]["top1"] >= 0.5
    assert not report["label_check"]["flagged"]
    manifest = storage.open_cache(str(out)).manifest
    assert manifest.class_list.num_classes == 1000
    assert manifest.class_list.source == "list"


def test_without_a_class_list_the_pass_stops_before_computing(
    wnid_photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    with pytest.raises(ClassListError, match="3 class folders but the teacher outputs 1000"):
        cache_build.prepare_cache(config_for(wnid_photos, out, None))
    assert not out.exists()


def test_sorted_folder_labels_are_flagged_after_the_pass(wnid_photos: Path, tmp_path: Path):
    out = tmp_path / "cache"
    report = run_pass(config_for(wnid_photos, out, "sorted-folders"))
    assert zarr.open_group(str(out), mode="r")["label"][...].tolist() == [0, 0, 1, 1, 2, 2]
    assert report["label_check"]["flagged"]
    assert report["label_check"]["top1"] == 0.0
    with pytest.raises(LabelOrderError, match="top-1 against the labels .* is 0.0000"):
        cache_report.require_label_agreement(report)
    assert "FLAGGED: LABEL MISMATCH" in storage.inspect(str(out))
