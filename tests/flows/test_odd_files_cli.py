"""Odd files through the installed `pld` command, from a folder outside the repository.

The empty file of issue 20 (a pass that crashed with a traceback), then the whole odd-file
corpus (`odd_files_testlib`) through a local Dask cluster: with skip_bad_images the pass
finishes and `pld inspect` names exactly the undecodable files with their reasons, a
student trains and validates on it; without, one `pld cache: error:` line names the first
bad file and the fix, exit status 2. As root, the commands run without CAP_DAC_OVERRIDE
(setpriv) so that a file without read permission is unreadable to them, as to any user.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cluster_testlib import BIN, cache_config, run_pld, user_env, write_yaml
from odd_files_testlib import BAD, DECODED, ODD, no_dac_prefix, write_corpus

import storage

pytestmark = pytest.mark.integration
STUDENT = "pld_pipeline.demo.small_models:tiny_cnn"
# A user's teacher module: the seeded tiny CNN, but building it deletes $VANISH. `pld cache`
# lists the folder before it builds the teacher, so the file vanishes between the listing
# and the reading (the Dask worker lists the folder again, without it).
VANISHING_TEACHER = """
import os
from pld_pipeline.demo.small_models import seeded_tiny_cnn

def tiny_cnn(num_classes: int = 10):
    path = os.environ.get("VANISH", "")
    if path and os.path.exists(path):
        os.remove(path)
    return seeded_tiny_cnn(num_classes)
"""


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("pld cache: error:")]


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]


def test_an_empty_file_is_recorded_bad_or_named_in_one_line(tmp_path, tiny_imagefolder):
    """Issue 20: an ImageNet-layout folder with one empty file crashed the pass."""
    data = Path(shutil.copytree(tiny_imagefolder, tmp_path / "data"))
    (data / "cup" / "zero.jpg").write_bytes(b"")
    env = user_env(tmp_path)
    skip = write_yaml(tmp_path / "skip.yaml",
                      cache_config(data, str(tmp_path / "skip.zarr"), skip_bad_images=True))  # fmt: skip
    result = run_pld(["cache", "--config", str(skip)], tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_no_traceback(result)
    shown = run_pld(["inspect", str(tmp_path / "skip.zarr")], tmp_path, env)
    assert shown.returncode == 0, shown.stderr
    assert "1 sample(s) could not be decoded and are skipped by training:" in shown.stdout
    assert "cup/zero.jpg: the file is empty (0 bytes)" in shown.stdout

    strict = write_yaml(tmp_path / "strict.yaml", cache_config(data, str(tmp_path / "s.zarr")))
    result = run_pld(["cache", "--config", str(strict)], tmp_path, env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert_no_traceback(result)
    (line,) = error_lines(result)
    assert f"Cannot use image {str(data / 'cup' / 'zero.jpg')!r}: the file is empty" in line
    assert line.endswith("set skip_bad_images: true to record it as bad and go on.")


@pytest.mark.slow  # four `pld` commands, one with a local Dask cluster: minutes
def test_the_corpus_through_dask_inspect_and_training(tmp_path):
    prefix = no_dac_prefix()
    corpus = write_corpus(tmp_path / "data")
    expected_bad = set(corpus.keys(BAD))
    if prefix:  # root without CAP_DAC_OVERRIDE: the no-read file is unreadable to pld
        expected_bad.add(f"{ODD}/no_read.jpg")
    decodable = set(corpus.keys(DECODED)) - expected_bad
    code = tmp_path / "user-code"
    code.mkdir()
    (code / "vanishing_teacher.py").write_text(VANISHING_TEACHER)
    kept = corpus.vanishing.read_bytes()
    env = user_env(tmp_path, PYTHONPATH=str(code), VANISH=str(corpus.vanishing))

    def pld(*args: str) -> subprocess.CompletedProcess:
        if not prefix:
            return run_pld(list(args), tmp_path, env)
        return subprocess.run(
            [*prefix, str(BIN / "pld"), *args], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=600, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    out = tmp_path / "cache.zarr"
    overrides = {"teacher.name": "vanishing_teacher:tiny_cnn", "skip_bad_images": True,
                 "shard_size": 4, "replay_check_samples": 8}  # fmt: skip
    config = write_yaml(tmp_path / "c.yaml", cache_config(corpus.root, str(out), **overrides))
    result = pld("cache", "--config", str(config), "--dask-workers", "1")
    assert result.returncode == 0, result.stderr[-4000:]
    assert_no_traceback(result)
    assert not corpus.vanishing.exists()  # it did vanish after the listing

    with storage.open_cache(str(out)) as reader:
        keys = [str(k) for k in reader.keys]
        bad = reader.bad_mask().any(axis=0)
        assert {k for k, b in zip(keys, bad, strict=True) if b} == expected_bad
        assert set(reader.bad_samples()) == expected_bad  # the manifest's bad list
        assert reader.labels.tolist() == [int(k.split("/")[0] == "plain") for k in keys]
    shown = pld("inspect", str(out))
    assert shown.returncode == 0, shown.stderr
    lines = [line.strip() for line in shown.stdout.splitlines()]
    for key in expected_bad:
        reason = "no permission" if key.endswith("no_read.jpg") else corpus.entry(key).reason
        assert any(line.startswith(f"{key}: ") and reason in line for line in lines), key
    for key in decodable:
        assert not any(line.startswith(f"{key}: ") for line in lines), key

    corpus.vanishing.write_bytes(kept)  # the folder is the cache's dataset again
    train = {
        "cache": str(out), "dataset_root": str(corpus.root), "classes": "sorted-folders",
        "val_root": str(corpus.root), "student": {"name": STUDENT, "image_size": 16},
        "loss": {"name": "pld"}, "optim": {"name": "sgd", "lr": 0.05}, "epochs": 1,
        "batch_size": 2, "device": "cpu", "num_workers": 0, "decode": "cpu",
        "run_dir": str(tmp_path / "run"),
    }  # fmt: skip
    result = pld("train", "--config", str(write_yaml(tmp_path / "t.yaml", train)))
    assert result.returncode == 0, result.stderr[-4000:]
    assert_no_traceback(result)
    final = json.loads((tmp_path / "run" / "result.json").read_text())["final"]
    assert final["unreadable_images"] == 0  # the bad files were never in training
    assert final["samples"] == len(decodable) // 2 * 2  # whole batches of the decodable ones
    undecodable_now = expected_bad - {f"{ODD}/vanishes.jpg"}  # it is back
    assert final["val_unreadable_images"] == len(undecodable_now)
    assert final["val_samples"] == len(decodable) + 1

    strict = cache_config(corpus.root, str(tmp_path / "strict.zarr"), shard_size=4)
    result = pld("cache", "--config", str(write_yaml(tmp_path / "s.yaml", strict)),
                 "--dask-workers", "1")  # fmt: skip
    assert result.returncode == 2, result.stderr[-4000:]
    assert_no_traceback(result)
    (line,) = error_lines(result)
    named = [k for k in undecodable_now if repr(str(corpus.root / k)) in line]
    assert len(named) == 1, line  # the file its shard met first
    assert line.endswith("set skip_bad_images: true to record it as bad and go on.")
