"""timm students: a run from the local Hugging Face cache (or a checkpoint) starts from the
file's weights, takes its eval crop and filter from the pretrained config
(`eval_crop_pct: model`, `interpolation: model`), passes kwargs through, and its evaluation
equals the trained weights called by hand (timm model, PIL pixels, float64)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from imagenet_subset import imagenet_class_list
from timm_testlib import CONV, VIT, eval_box, hand_logits, hand_model, hand_pixels, state_from_file

from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import ConfigError
from pld_pipeline.student.run.build import build_run
from pld_pipeline.student.run.train import fit
from pld_pipeline.teacher import cache_build, cache_report


@pytest.fixture(scope="module")
def class_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "imagenet1k_wnids.txt"
    path.write_text("\n".join(imagenet_class_list()) + "\n")
    return path


@pytest.fixture
def timm_cache(offline_hub, wnid_photos: Path, class_file: Path, tmp_path: Path) -> Path:
    """A 1000-class timm teacher (the ResNet from the hub cache) over the 3-wnid subset."""
    out = tmp_path / "cache"
    config = CacheConfig.model_validate({
        "dataset_root": str(wnid_photos), "classes": str(class_file),
        "teacher": {"name": f"timm:{CONV}"}, "views": {"mode": "replay", "num_views": 2},
        "k": 5, "temperatures": [1.0, 2.0], "shard_size": 3, "output": str(out),
        "batch_size": 3, "num_workers": 0, "device": "cpu", "amp": "off",
        "replay_check_samples": 0, "min_label_agreement": 0.0,
    })  # fmt: skip
    plan = cache_build.prepare_cache(config)
    for shard, views in plan.shard_tasks():
        cache_build.build_shard(config, shard, views)
    cache_report.finalize_cache(config)
    return out


def student_config(cache: Path, root: Path, classes: Path, run_dir: Path, **student) -> TrainConfig:
    return TrainConfig.model_validate({
        "cache": str(cache), "dataset_root": str(root), "classes": str(classes),
        "val_root": str(root), "run_dir": str(run_dir),
        "student": {"name": "timm:test_vit", "pretrained": True, "image_size": 160,
                    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                    "eval_crop_pct": "model", "interpolation": "model",
                    "kwargs": {"drop_path_rate": 0.05}} | student,
        "loss": {"name": "pld"}, "optim": {"name": "sgd", "lr": 0.01}, "epochs": 1,
        "batch_size": 2, "device": "cpu", "amp": "off", "num_workers": 0, "seed": 0,
    })  # fmt: skip


def test_a_timm_student_from_the_hub_cache_equals_the_model_by_hand(
    offline_hub, timm_cache: Path, wnid_photos: Path, class_file: Path, tmp_path: Path
) -> None:
    import timm.data

    config = student_config(timm_cache, wnid_photos, class_file, tmp_path / "run")
    expected = timm.data.resolve_data_config(model=timm.create_model(VIT))

    run = build_run(config)
    hub = state_from_file(offline_hub.files[VIT])
    state = run.model.state_dict()
    assert sorted(state) == sorted(hub)
    assert all(torch.equal(state[k], v) for k, v in hub.items())  # starts from the file
    assert run.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.05)  # kwargs
    s = run.config.student
    assert (s.eval_crop_pct, s.interpolation) == (expected["crop_pct"], expected["interpolation"])
    # The eval view: timm's crop box, resized as PIL does (within a level).
    val = ImageFolderDataset(wnid_photos, classes=imagenet_class_list())
    batch = next(iter(run.loaders.val))
    for row, i in enumerate(batch.index.tolist()):
        h, w = val.load_rgb(i).size[::-1]
        box = eval_box(h, w, expected["crop_pct"])
        ref = hand_pixels(val.path(i), box, False, 160, expected["interpolation"])
        assert (batch.images[row].double() - ref).abs().max() <= 1

    result = fit(config)
    # Evaluation of the trained student == the trained weights called by hand.
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    torch.save(trained, tmp_path / "trained.pt")
    model = hand_model(VIT, tmp_path / "trained.pt")
    assert not torch.equal(trained["head.weight"], hub["head.weight"])  # it trained
    pixels, labels = [], []
    for i in range(len(val)):
        h, w = val.load_rgb(i).size[::-1]
        box = eval_box(h, w, expected["crop_pct"])
        pixels.append(hand_pixels(val.path(i), box, False, 160, expected["interpolation"]))
        labels.append(val.labels[i])
    logits = hand_logits(model, pixels, expected["mean"], expected["std"])
    labels_t = torch.tensor(labels, dtype=torch.int64)
    nll = F.cross_entropy(logits, labels_t).item()
    top1 = 100.0 * (logits.argmax(1) == labels_t).double().mean().item()
    assert result.final_nll == pytest.approx(nll, abs=1e-3)
    assert result.final_top1 == pytest.approx(top1)
    assert result.student == "timm:test_vit"


def test_a_timm_student_from_a_checkpoint(
    offline_hub, timm_cache: Path, wnid_photos: Path, class_file: Path, tmp_path: Path
) -> None:
    config = student_config(
        timm_cache, wnid_photos, class_file, tmp_path / "run", name=f"timm:{CONV}",
        pretrained=None, checkpoint=str(offline_hub.checkpoint), kwargs={},
        interpolation="bilinear", eval_crop_pct=0.9,
    )  # fmt: skip
    run = build_run(config)
    expected = torch.load(offline_hub.checkpoint, weights_only=True)
    assert all(torch.equal(run.model.state_dict()[k], v) for k, v in expected.items())
    assert (run.config.student.eval_crop_pct, run.config.student.interpolation) == (
        0.9, "bilinear",
    )  # fmt: skip


def test_model_inputs_need_a_pretrained_config(
    timm_cache: Path, wnid_photos: Path, class_file: Path, tmp_path: Path
) -> None:
    config = student_config(
        timm_cache, wnid_photos, class_file, tmp_path / "run", name="resnet18",
        pretrained=None, kwargs={},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="student.eval_crop_pct: model, but the student"):
        build_run(config)
