"""`pld cache` and `pld train` list their image folder once: the CLI's checks are the first
half of the run, and the run (the flow, its shard tasks, finalize, the replay check, the
student's build) uses what they listed. Counted on the one function that scans a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pld_pipeline import datasets

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def listings(monkeypatch) -> list[str]:
    """The roots `ImageFolderDataset._scan` lists in this process, in order."""
    seen: list[str] = []
    scan = datasets.ImageFolderDataset._scan

    def counted(self, *args, **kwargs):
        seen.append(str(self.root))
        return scan(self, *args, **kwargs)

    monkeypatch.setattr(datasets.ImageFolderDataset, "_scan", counted)
    return seen


def write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_pld_cache_then_pld_train_each_list_the_folder_once(
    tiny_imagefolder, tmp_path, listings, monkeypatch
):
    from flows import cli

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "c.zarr"
    cache_yaml = write(tmp_path / "cache.yaml", {
        "dataset_root": str(tiny_imagefolder), "classes": "sorted-folders",
        "min_label_agreement": 0.0,
        "teacher": {"name": "pld_pipeline.demo.small_models:seeded_tiny_cnn", "num_classes": 10,
                    "input_size": 24},
        "views": {"mode": "replay", "num_views": 2, "seed": 0}, "k": 4, "shard_size": 4,
        "output": str(cache), "batch_size": 4, "num_workers": 0, "device": "cpu",
        "replay_check_samples": 3,
    })  # fmt: skip
    assert cli.main(["cache", "--config", cache_yaml]) == 0
    assert listings == [str(tiny_imagefolder)]  # check, plan, 3 shards, finalize, replay check

    listings.clear()
    train_yaml = write(tmp_path / "train.yaml", {
        "cache": str(cache), "dataset_root": str(tiny_imagefolder),
        "student": {"name": "pld_pipeline.demo.small_models:tiny_cnn", "image_size": 24},
        "epochs": 1, "batch_size": 4, "run_dir": str(tmp_path / "run"), "device": "cpu",
        "num_workers": 0,
    })  # fmt: skip
    assert cli.main(["train", "--config", train_yaml]) == 0
    assert listings == [str(tiny_imagefolder)]  # the check; build_run took what it listed
    assert (tmp_path / "run" / "result.json").is_file()


def test_a_run_started_without_the_cli_checks_for_itself(tiny_imagefolder, tmp_path, listings):
    """Nothing waits for a run the CLI did not check (the UI, a notebook): it lists itself."""
    from pld_pipeline.configs.train import TrainConfig
    from pld_pipeline.student.run.inputs import take

    config = TrainConfig.model_validate({
        "dataset_root": str(tiny_imagefolder), "cache": None, "loss": {"name": "ce"},
        "student": {"name": "pld_pipeline.demo.small_models:tiny_cnn", "image_size": 24},
        "run_dir": str(tmp_path / "r"), "device": "cpu", "num_workers": 0, "batch_size": 4,
    })  # fmt: skip
    assert take(config) is None
    from pld_pipeline.student.run.build import build_run

    build_run(config)
    assert listings == [str(tiny_imagefolder)]
