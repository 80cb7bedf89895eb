"""Class lists and the guard before a pass: reading lists, bad lists, labels as positions in
the list, the fewer-folders-than-classes guard, the default agreement threshold, and caches
written before class lists existed (they still read, hash the same, resume and train)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from pydantic import ValidationError
from train_testlib import make_cache, train_config

import storage
from pld_pipeline import label_order
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import ClassListError, DatasetError
from pld_pipeline.student.run.train import fit
from storage import manifest_hash

BASE = {"dataset_root": "/data", "teacher": {"name": "resnet50"}, "output": "runs/c"}


def test_class_list_file_is_read_in_order(tmp_path: Path) -> None:
    file = tmp_path / "wnids.txt"
    file.write_text("n01440764\n\n  n01443537 \nn01484850\n")
    assert label_order.resolve_classes(str(file)) == ["n01440764", "n01443537", "n01484850"]
    assert label_order.resolve_classes(["b", "a"]) == ["b", "a"]
    assert label_order.resolve_classes("sorted-folders") is None
    assert label_order.resolve_classes(None) is None


@pytest.mark.parametrize(
    ("classes", "fragment"),
    [
        ([], "classes is empty"),
        (["blue", "green", "blue"], "names 'blue' twice \\(positions 0 and 2\\)"),
        (["blue", "a/b"], "holds '/'"),
        (["blue", " green"], "surrounding spaces"),
        ("", "empty string"),
    ],
)
def test_bad_class_lists_in_configs_are_refused(classes, fragment: str) -> None:
    for model, data in (
        (CacheConfig, BASE),
        (TrainConfig, {**BASE, "cache": None, "run_dir": "r"}),
    ):
        with pytest.raises(ValidationError, match=fragment):
            model.model_validate(data | {"classes": classes})


def test_bad_class_list_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ClassListError, match="does not exist.*one class-folder name per line"):
        label_order.resolve_classes(str(tmp_path / "missing.txt"))
    twice = tmp_path / "twice.txt"
    twice.write_text("a\nb\na\n")
    with pytest.raises(ClassListError, match="twice.txt.*names 'a' twice"):
        label_order.resolve_classes(str(twice))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ClassListError, match="is empty"):
        label_order.resolve_classes(str(empty))


def test_labels_are_positions_in_the_list(color_folder: Path) -> None:
    # Six teacher classes, three folders present: folders missing from the list order are fine.
    names = ["cyan", "red", "magenta", "blue", "yellow", "green"]
    data = label_order.load_dataset(color_folder, None, names)
    expected = {"blue": 3, "green": 5, "red": 1}  # positions, by hand
    assert data.labels.tolist() == [expected[k.split("/")[0]] for k in data.keys]
    assert data.folders == ["blue", "green", "red"]
    label_order.check_label_space(data, 6, names)  # no error
    record = label_order.class_list_record(data, names)
    by_hand = hashlib.sha256("".join(f"{n}\n" for n in names).encode()).hexdigest()
    assert (record.sha256, record.num_classes, record.source) == (by_hand, 6, "list")


def test_folders_not_in_the_list_are_named(color_folder: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"1 class folders .* not in the given class list.*'red'"
    ):
        label_order.load_dataset(color_folder, None, ["blue", "green", "cyan"])


def test_guard_stops_a_subset_without_a_class_list(color_folder: Path) -> None:
    data = label_order.load_dataset(color_folder, None, None)
    with pytest.raises(ClassListError) as info:
        label_order.check_label_space(data, 1000, None)
    text = str(info.value)
    for fragment in ("3 class folders", "outputs 1000 classes", "no class list was given",
                     "Set `classes`", "classes: sorted-folders"):  # fmt: skip
        assert fragment in text, fragment
    # The explicit opt-in keeps the sorted positions; equal counts need nothing.
    label_order.check_label_space(data, 1000, "sorted-folders")
    label_order.check_label_space(data, 3, None)
    record = label_order.class_list_record(data, "sorted-folders")
    assert record.source == "sorted-folders"
    assert record.sha256 == hashlib.sha256(b"blue\ngreen\nred\n").hexdigest()


def test_guard_refuses_lists_of_another_length_and_too_many_folders(color_folder: Path) -> None:
    names = ["blue", "green", "red", "cyan"]
    data = label_order.load_dataset(color_folder, None, names)
    with pytest.raises(ClassListError, match="has 4 names but the teacher outputs 1000 classes"):
        label_order.check_label_space(data, 1000, names)
    plain = label_order.load_dataset(color_folder, None, None)
    with pytest.raises(ClassListError, match="3 class folders but the teacher outputs only 2"):
        label_order.check_label_space(plain, 2, "sorted-folders")


@pytest.mark.parametrize(
    ("num_classes", "expected"),
    [(1000, 0.005), (100, 0.05), (10, 0.5), (9, 5 / 9), (5, 0.6), (3, 2 / 3), (2, 0.75)],
)
def test_default_min_agreement_is_five_times_chance(num_classes: int, expected: float) -> None:
    # 5 / C, or (1 + 1/C) / 2 where 5 / C would be out of reach (C < 9).
    assert label_order.default_min_agreement(num_classes) == pytest.approx(expected, abs=1e-12)


# What the code before class lists wrote as the manifest (every key, nothing more).
OLD_MANIFEST_KEYS = {
    "teacher", "views", "format", "k", "temperatures", "dataset_fingerprint", "num_samples",
    "shard_size", "schema_version", "library_versions", "created_at", "producer",
}  # fmt: skip


def _old_manifest(root: Path) -> dict:
    """A manifest as the code before class lists wrote it, for make_cache's oracle teacher."""
    lines = sorted(
        f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}\n" for p in root.rglob("*.png")
    )
    return {
        "teacher": {"name": "oracle", "weights_source": "none", "weights_sha256": "0" * 64,
                    "num_classes": 6, "input_size": 12, "mean": [0.5, 0.5, 0.5],
                    "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"},
        "views": {"mode": "replay", "num_views": 2, "seed": 3, "scale": [0.08, 1.0],
                  "ratio": [0.75, 4 / 3], "crop_pct": 0.875},
        "format": "topk", "k": 4, "temperatures": [1.0, 2.0, 4.0],
        "dataset_fingerprint": hashlib.sha256("".join(lines).encode()).hexdigest(),
        "num_samples": len(lines), "shard_size": 10, "schema_version": 1,
        "library_versions": {"python": "3.11.7", "numpy": "2.0.0", "zarr": "3.0.8"},
        "created_at": "2026-01-01T00:00:00+00:00", "producer": "an older pld-pipeline",
    }  # fmt: skip


@pytest.fixture(scope="module")
def old_cache(tmp_path_factory: pytest.TempPathFactory, color_folder: Path) -> Path:
    """A cache whose manifest is exactly what the code before class lists wrote."""
    path = make_cache(tmp_path_factory.mktemp("old") / "cache.zarr", color_folder)
    group = zarr.open_group(str(path), mode="r+")
    # Without a class list the writer still writes the old key set (plus the schema 2
    # record_precision), byte for byte the format.
    assert set(group.attrs["pld_cache"]) == OLD_MANIFEST_KEYS | {"record_precision"}
    group.attrs["pld_cache"] = _old_manifest(color_folder)
    group.attrs["schema_version"] = 1  # as that code wrote the group's version too
    return path


def test_a_cache_written_before_class_lists_still_reads(old_cache: Path, color_folder: Path):
    reader = storage.open_cache(str(old_cache))
    m = reader.manifest
    assert m.class_list is None
    assert m.label_check is None
    assert not m.label_mismatch
    assert m.to_dict() == _old_manifest(color_folder)
    images = ImageFolderDataset(color_folder)
    reader.validate(dataset_keys=images.keys, dataset_fingerprint=images.fingerprint())
    text = storage.inspect(str(old_cache))
    assert "classes    not recorded" in text
    assert "labels     not checked" in text
    # A student run's identity of the cache is unchanged, so runs started before resume.
    by_hand = hashlib.sha256(
        json.dumps(_old_manifest(color_folder), sort_keys=True).encode()
    ).hexdigest()
    assert manifest_hash(m) == by_hand
    # A pass configured today (with a class list) resumes it: the list is not compared.
    today = storage.Manifest.from_dict({
        **_old_manifest(color_folder),
        "class_list": {"sha256": storage.class_list_sha256(["blue", "green", "red"]),
                       "num_classes": 3, "source": "sorted-folders"},
    })  # fmt: skip
    writer = storage.open_writer(str(old_cache), today)
    assert writer.manifest.class_list is None  # the stored manifest is left as it was
    other = storage.Manifest.from_dict({**today.to_dict(), "k": 3})
    with pytest.raises(storage.ManifestMismatchError, match="k: 4 != 3"):
        storage.open_writer(str(old_cache), other)


def test_a_student_trains_from_a_cache_written_before_class_lists(
    old_cache: Path, color_folder: Path, tmp_path: Path
) -> None:
    result = fit(train_config(old_cache, color_folder, tmp_path / "run", epochs=1))
    by_hand = hashlib.sha256(
        json.dumps(_old_manifest(color_folder), sort_keys=True).encode()
    ).hexdigest()
    assert result.epochs == 1
    assert result.manifest_hash == by_hand
    # A run directory written before class lists (config.json without the new fields) resumes.
    stored = tmp_path / "run" / "config.json"
    config = json.loads(stored.read_text())
    assert config.pop("classes") is None
    assert config.pop("allow_label_mismatch") is False
    stored.write_text(json.dumps(config))
    (tmp_path / "run" / "result.json").unlink()
    resumed = fit(train_config(old_cache, color_folder, tmp_path / "run", epochs=1, resume=True))
    assert resumed.manifest_hash == by_hand
    assert len(resumed.history) == 1
    # Recording a label check later (a finishing rerun) keeps the run's cache identity.
    before = manifest_hash(storage.open_cache(str(old_cache)).manifest)
    check = label_order.agreement_check(0.9, 48, 6, None)
    storage.open_writer(str(old_cache)).record_label_check(check)
    assert manifest_hash(storage.open_cache(str(old_cache)).manifest) == before
    stored = zarr.open_group(str(old_cache), mode="r").attrs["pld_cache"]["label_check"]
    assert stored == {"top1": 0.9, "min_agreement": 7 / 12, "records": 48, "flagged": False}


def test_student_labels_must_match_the_cache(color_folder: Path, tmp_path: Path) -> None:
    cache = make_cache(tmp_path / "cache.zarr", color_folder)
    images = ImageFolderDataset(color_folder)
    names = ["blue", "green", "red", "x", "y", "z"]
    group = zarr.open_group(str(cache), mode="r+")
    group.attrs["pld_cache"] = {
        **group.attrs["pld_cache"],
        "class_list": {"sha256": storage.class_list_sha256(names), "num_classes": 6,
                       "source": "list"},
    }  # fmt: skip
    # Another list with the same first three names: training labels agree, the list does not.
    other = ["blue", "green", "red", "p", "q", "r"]
    with pytest.raises(ClassListError, match="is not the one .* was made with"):
        fit(train_config(cache, color_folder, tmp_path / "a", classes=other, epochs=1))
    # A list that moves the folders: the labels differ, named with an example.
    moved = ["x", "blue", "green", "red", "y", "z"]
    key = images.keys[0]
    with pytest.raises(ClassListError, match=f"'{key}' is label 1 here and 0 in the cache"):
        fit(train_config(cache, color_folder, tmp_path / "b", classes=moved, epochs=1))
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    # The cache's own list trains.
    fit(train_config(cache, color_folder, tmp_path / "c", classes=names, epochs=1))
    assert np.array_equal(storage.open_cache(str(cache)).labels, images.labels)


@pytest.mark.integration
def test_wnid_script_reads_a_torchvision_imagenet_root(tmp_path: Path) -> None:
    """examples/imagenet_wnids.py (the docs' ImageNet page shows it), run as written on a
    root holding torchvision's meta.bin."""
    import subprocess
    import sys

    import torch

    script = Path(__file__).resolve().parents[2] / "examples" / "imagenet_wnids.py"
    wnids = ["n15075141", "n01440764", "n02123159", "n01443537"]  # meta.bin keeps devkit order
    root = tmp_path / "imagenet"
    root.mkdir()
    torch.save(({w: (f"name of {w}",) for w in wnids}, wnids[:2]), root / "meta.bin")
    out = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["n01440764", "n01443537", "n02123159", "n15075141"]
    listed = tmp_path / "wnids.txt"
    listed.write_text(out.stdout)
    assert label_order.resolve_classes(str(listed))[0] == "n01440764"
