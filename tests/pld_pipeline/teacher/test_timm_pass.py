"""A teacher pass with timm teachers (a ViT from the local Hugging Face cache, a ResNet from
a checkpoint) over real photos equals the same timm model called by hand: the manifest's
preprocessing is `timm.data.resolve_data_config`'s, the crop boxes are timm's eval crop,
and the cached fp16 logits equal a float64 forward of the weights file read by hand on
pixels cut and resized with PIL. A 1000-class timm teacher over a 3-class subset goes
through the class-list guard."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from imagenet_subset import WNID_INDEX, imagenet_class_list
from timm_testlib import CONV, VIT, eval_box, hand_logits, hand_model, hand_pixels

import storage
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.errors import ClassListError
from pld_pipeline.teacher import cache_build, cache_report
from pld_pipeline.teacher.replay_check import replay_check


def config_for(root: Path, output: Path, teacher: dict, **overrides) -> CacheConfig:
    data = {
        "dataset_root": str(root), "classes": "sorted-folders", "teacher": teacher,
        "format": "full", "shard_size": 3, "output": str(output), "batch_size": 3,
        "num_workers": 0, "device": "cpu", "amp": "off", "replay_check_samples": 2,
        "min_label_agreement": 0.0,  # random-init teachers
    }  # fmt: skip
    return CacheConfig.model_validate(data | overrides)


def run_pass(config: CacheConfig) -> dict:
    """The cache-teacher flow's steps, without Prefect: plan, every shard, finalize."""
    plan = cache_build.prepare_cache(config)
    for shard, views in plan.shard_tasks():
        cache_build.build_shard(config, shard, views)
    return cache_report.finalize_cache(config).as_dict()


def fp16_tolerance(reference: torch.Tensor) -> float:
    """Storage rounding (fp16: 2^-11 relative) at the logits' size, plus the 1-level pixel
    rounding differences between PIL's resize and the pipeline's (a few 1e-4 here)."""
    return float(reference.abs().max()) * 2.0**-10 + 1e-3


CASES = {
    "vit-from-hub-cache-eval": (VIT, {"name": "timm:test_vit"}, {"mode": "eval"}),
    "resnet-from-checkpoint-replay": (
        CONV, {"name": f"timm:{CONV}", "checkpoint": None},
        {"mode": "replay", "num_views": 2, "seed": 4},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_pass_equals_the_timm_model_called_by_hand(
    case: str, offline_hub, real_photos: Path, tmp_path: Path
) -> None:
    import timm
    import timm.data

    tag, teacher, views = CASES[case]
    if "checkpoint" in teacher:
        teacher = {**teacher, "checkpoint": str(offline_hub.checkpoint)}
        weights = offline_hub.checkpoint
    else:
        weights = offline_hub.files[tag]
    out = tmp_path / "cache"
    config = config_for(real_photos, out, teacher, views=views)
    run_pass(config)
    assert replay_check(config).passed  # the flow's own check: a fresh forward agrees

    # The manifest: the tag, the weights' sha256, timm's own preprocessing.
    expected = timm.data.resolve_data_config(model=timm.create_model(tag))
    manifest = zarr.open_group(str(out), mode="r").attrs["pld_cache"]
    t = manifest["teacher"]
    assert t["name"] == f"timm:{tag}"
    assert t["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert [3, t["input_size"], t["input_size"]] == list(expected["input_size"])
    assert t["mean"] == pytest.approx(expected["mean"])
    assert t["std"] == pytest.approx(expected["std"])
    assert t["interpolation"] == expected["interpolation"]
    assert manifest["views"]["crop_pct"] == pytest.approx(expected["crop_pct"])
    assert manifest["library_versions"]["timm"] == timm.__version__

    # Boxes, pixels and logits by hand: PIL crops and resizes, float64 forward of the file.
    group = zarr.open_group(str(out), mode="r")
    keys = [str(k) for k in group["key"][...]]
    size, interp = t["input_size"], expected["interpolation"]
    model = hand_model(tag, weights)
    for v in range(group["logits"].shape[0]):
        crops, flips = group["crop"][v], group["flip"][v]
        if views["mode"] == "eval":
            hw = group["hw"][...]
            assert [list(eval_box(h, w, expected["crop_pct"])) for h, w in hw] == crops.tolist()
        pixels = [
            hand_pixels(real_photos / key, crops[i], bool(flips[i]), size, interp)
            for i, key in enumerate(keys)
        ]
        ref = hand_logits(model, pixels, expected["mean"], expected["std"])
        cached = torch.from_numpy(group["logits"][v].astype(np.float64))
        tol = fp16_tolerance(ref)
        assert (cached - ref).abs().max() <= tol
        assert (ref.std(dim=1) > 50 * tol).all()  # logits far apart against the tolerance
        assert torch.equal(cached.argmax(1), ref.argmax(1))
        # The comparison can fail: another crop fraction or filter is far off.
        wrong = [
            hand_pixels(real_photos / key, eval_box(*group["hw"][i], 0.875), False, size,
                        "bilinear" if interp == "bicubic" else "bicubic")
            for i, key in enumerate(keys)
        ]  # fmt: skip
        assert (
            hand_logits(model, wrong, expected["mean"], expected["std"]) - cached
        ).abs().max() > 10 * tol


def test_a_1000_class_timm_teacher_over_a_subset_needs_the_class_list(
    offline_hub, wnid_photos: Path, tmp_path: Path
) -> None:
    teacher = {"name": f"timm:{CONV}"}
    with pytest.raises(ClassListError, match="3 class folders but the teacher outputs 1000"):
        cache_build.prepare_cache(config_for(wnid_photos, tmp_path / "no", teacher, classes=None))
    assert not (tmp_path / "no").exists()

    names = tmp_path / "imagenet1k_wnids.txt"
    names.write_text("\n".join(imagenet_class_list()) + "\n")
    out = tmp_path / "cache"
    run_pass(config_for(wnid_photos, out, teacher, classes=str(names), format="topk", k=5))
    group = zarr.open_group(str(out), mode="r")
    keys = [str(k) for k in group["key"][...]]
    labels = group["label"][...]
    assert labels.tolist() == [WNID_INDEX[k.split("/")[0]] for k in keys]
    manifest = storage.open_cache(str(out)).manifest
    assert (manifest.class_list.num_classes, manifest.class_list.source) == (1000, "list")
    # gt_logit is the hand-made forward's logit at the wnid's ImageNet index.
    model = hand_model(CONV, offline_hub.files[CONV])
    import timm.data

    cfg = timm.data.resolve_data_config(model=model)
    pixels = [
        hand_pixels(wnid_photos / key, group["crop"][0, i], False, 160, cfg["interpolation"])
        for i, key in enumerate(keys)
    ]
    ref = hand_logits(model, pixels, cfg["mean"], cfg["std"])[np.arange(len(keys)), labels]
    assert np.abs(group["gt_logit"][0] - ref.numpy()).max() <= fp16_tolerance(ref)
