"""The files under examples/ that the docs and the README show: every config loads through
its pydantic model, schedules.yaml through `pld serve`'s reader, the class lists hold the
wnids they claim, and the scripts run on small data.

References: the ImageNet recipe and class facts come from the paper and from torchvision's
class order (tests/imagenet_subset.py's three wnids), not from the code under test.
"""

from __future__ import annotations

import math
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from imagenet_subset import WNID_INDEX

from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.configs.demo import DemoConfig
from pld_pipeline.configs.loading import load_config
from pld_pipeline.configs.train import SweepConfig, TrainConfig, expand_grid

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CONFIGS = sorted(p for p in EXAMPLES.rglob("*.yaml") if p.name != "schedules.yaml")


def model_of(data: dict) -> type:
    """Which config a YAML mapping is, from its keys (each model refuses unknown keys)."""
    if "base" in data and "grid" in data:
        return SweepConfig
    if "teacher" in data:
        return CacheConfig
    if "run_dir" in data:
        return TrainConfig
    return DemoConfig


@pytest.fixture
def in_checkout(monkeypatch):
    """The configs name their class list relative to the checkout, as the docs run them."""
    monkeypatch.chdir(ROOT)


def test_examples_exist():
    names = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*") if p.is_file()}
    for name in (
        "demo.yaml",
        "imagenet-1k/cache-r152.yaml",
        "imagenet-1k/train-r50-pld.yaml",
        "imagenet-100/cache-in100.yaml",
        "imagenet-100/train-in100-pld.yaml",
        "imagenet-100/imagenet100_wnids.txt",
        "imagenet1k_wnids.txt",
        "sweep-losses-temperatures.yaml",
        "schedules.yaml",
        "imagenet_wnids.py",
        "loss_from_cache.py",
    ):
        assert name in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_every_config_validates(path, in_checkout):
    data = yaml.safe_load(path.read_text())
    if set(data) == {"teacher"}:  # a snippet a page shows: the teacher part of a cache config
        from pld_pipeline.configs.cache import TeacherConfig

        TeacherConfig.model_validate(data["teacher"])
        return
    model = model_of(data)
    config = load_config(model, path)  # the CLI's own loader: a bad field is a ConfigError
    # Every key written in the file was read into the model (nothing silently dropped).
    assert set(data) <= set(type(config).model_fields)
    classes = getattr(config, "classes", None) or getattr(
        getattr(config, "base", None), "classes", None
    )
    if isinstance(classes, str) and not classes.startswith("/"):
        assert (ROOT / classes).is_file(), f"{path.name} names {classes}, which is not shipped"


def test_demo_example_is_make_demo():
    """`pld demo --config examples/demo.yaml` is the same run as `make demo` (the defaults)."""
    assert load_config(DemoConfig, EXAMPLES / "demo.yaml") == DemoConfig()


def test_pld_demo_reads_the_config_file(tmp_path, capsys):
    """`pld demo --config FILE`: the file is read (its errors are the file's), no flow starts."""
    from flows.cli import main

    assert main(["demo", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    bad = tmp_path / "demo.yaml"
    bad.write_text("student_epochs: 0\n")
    assert main(["demo", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Invalid DemoConfig" in err
    assert "student_epochs" in err


def test_imagenet_recipe_is_the_papers(in_checkout):
    """ResNet-50 from ResNet-152 on ImageNet-1k: LAMB, lr 5e-3, weight decay 0.02, 5 warm-up
    epochs, batch 2048, 100 epochs, random-resized crop + flip; RSB A evaluation."""
    cache = load_config(CacheConfig, EXAMPLES / "imagenet-1k" / "cache-r152.yaml")
    assert cache.teacher.name == "resnet152"
    assert cache.teacher.weights == "ResNet152_Weights.IMAGENET1K_V2"
    assert cache.views.mode == "replay"  # RandomResizedCrop + flip per view
    assert tuple(cache.views.scale) == (0.08, 1.0)
    assert 1.0 in cache.temperatures
    train = load_config(TrainConfig, EXAMPLES / "imagenet-1k" / "train-r50-pld.yaml")
    assert train.cache == cache.output
    assert train.classes == cache.classes
    assert train.student.name == "resnet50"
    assert (train.optim.name, train.optim.lr, train.optim.weight_decay) == ("lamb", 5e-3, 0.02)
    assert train.optim.warmup_epochs == 5
    assert (train.batch_size, train.epochs) == (2048, 100)
    assert (train.loss.name, train.loss.temperature) == ("pld", 1.0)
    assert train.student.eval_crop_pct == 0.95
    assert train.student.interpolation == "bicubic"


def test_imagenet1k_class_list():
    from pld_pipeline.label_order import resolve_classes

    names = resolve_classes(str(EXAMPLES / "imagenet1k_wnids.txt"))
    assert len(names) == 1000
    assert len(set(names)) == 1000
    assert all(re.fullmatch(r"n\d{8}", n) for n in names)
    assert names == sorted(names)  # torchvision's and timm's order: sorted wnids
    assert (names[0], names[-1]) == ("n01440764", "n15075141")  # tench, toilet tissue
    for wnid, index in WNID_INDEX.items():
        assert names[index] == wnid


def test_imagenet100_under_the_1000_class_teacher(in_checkout):
    thousand = (EXAMPLES / "imagenet1k_wnids.txt").read_text().split()
    hundred = (EXAMPLES / "imagenet-100" / "imagenet100_wnids.txt").read_text().split()
    assert len(hundred) == len(set(hundred)) == 100
    assert set(hundred) <= set(thousand)
    assert thousand.index("n01558993") == 15  # the label the docs promise for this folder
    assert "n01558993" in hundred
    cache = load_config(CacheConfig, EXAMPLES / "imagenet-100" / "cache-in100.yaml")
    train = load_config(TrainConfig, EXAMPLES / "imagenet-100" / "train-in100-pld.yaml")
    # The teacher's whole list, not the 100 folders: labels are ImageNet-1k indices.
    assert cache.classes == train.classes == "examples/imagenet1k_wnids.txt"
    assert train.cache == cache.output


def test_sweep_covers_every_loss_and_temperature(in_checkout):
    sweep = load_config(SweepConfig, EXAMPLES / "sweep-losses-temperatures.yaml")
    runs = expand_grid(sweep)
    points = {(c.loss.name, c.loss.temperature, c.seed) for _, c in runs}
    assert points == {
        (loss, t, seed)
        for loss in ("kd", "dist", "dkd", "pld")
        for t in (1.0, 2.0, 4.0)
        for seed in (0, 1)
    }
    assert len({name for name, _ in runs}) == len(runs) == 24
    cache = load_config(CacheConfig, EXAMPLES / "imagenet-1k" / "cache-r152.yaml")
    assert sweep.base.cache == cache.output
    assert {t for _, t, _ in points} <= set(cache.temperatures)  # every T is cached


def test_schedules_weekly_pass_and_triggered_sweep():
    from flows.deployments import make_trigger, read_schedules

    path = EXAMPLES / "schedules.yaml"
    schedules = read_schedules(path)  # what `pld serve --schedules` reads (checks the trigger)
    weekly = schedules["cache-teacher"]
    assert weekly["cron"] == "0 2 * * 0"  # Sundays 02:00
    cache = CacheConfig.model_validate(weekly["parameters"]["config"])
    assert "{date}" in cache.output
    entry = schedules["sweep"]
    assert "cron" not in entry
    trigger = make_trigger("sweep", entry, str(path))
    assert trigger.match["prefect.resource.id"] == ["s3://caches/weekly*"]
    assert cache.output.startswith("s3://caches/weekly")  # the pass feeds the trigger
    SweepConfig.model_validate(trigger.parameters["config"] | {"base": _stand_in(entry)})


def _stand_in(entry: dict) -> dict:
    """The sweep's base as the trigger fills it: a cache URL instead of the template."""
    base = dict(entry["parameters"]["config"]["base"])
    base["cache"] = "s3://caches/weekly-2026-11-29"
    return base


def test_loss_from_cache_script_runs(tmp_path, monkeypatch, capsys):
    """examples/loss_from_cache.py on a small cache: every loss printed, finite."""
    import storage
    from storage.synthetic import make_manifest, make_records

    manifest = make_manifest(num_samples=40, num_classes=10, k=5, temperatures=(1.0, 2.0, 4.0))
    labels = np.random.default_rng(0).integers(0, 10, 40).astype(np.int32)
    keys = [f"c{label}/img{i:03d}.png" for i, label in enumerate(labels)]
    writer = storage.create(tmp_path / "cache", manifest, keys, labels)
    for v in range(manifest.num_views):
        for s in range(manifest.num_shards):
            a, b = writer.shard_range(s)
            writer.write_shard(v, s, make_records(manifest, v, a, b, labels))
    monkeypatch.setattr(sys, "argv", ["loss_from_cache.py", str(tmp_path / "cache")])
    runpy.run_path(str(EXAMPLES / "loss_from_cache.py"), run_name="__main__")
    printed = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    assert set(printed) == {"pld", "kd", "ce"}
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in printed.values())
