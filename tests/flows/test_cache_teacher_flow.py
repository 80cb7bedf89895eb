"""The cache-teacher flow: identical caches over runners, resume after SIGKILL, artifacts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from cluster_testlib import arrays_of, assert_same_arrays, cache_config

import storage
from pld_pipeline.configs.cache import CacheConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")


def make_config(root: Path, output: Path, **overrides) -> CacheConfig:
    # The installed-CLI tests' tiny pass (an untrained 10-class teacher on 3 folders, the
    # label-agreement check off; its own tests are in test_label_order_flow.py), in shards
    # and batches of 4.
    data = cache_config(root, str(output), **{"shard_size": 4, "batch_size": 4, **overrides})
    return CacheConfig.model_validate(data)


def assert_same_cache(a: Path, b: Path) -> None:
    assert_same_arrays(arrays_of(str(a)), arrays_of(str(b)))


@pytest.fixture(scope="module")
def reference_cache(tiny_imagefolder: Path, tmp_path_factory) -> Path:
    from flows.cache_teacher import cache_teacher

    out = tmp_path_factory.mktemp("ref") / "cache"
    report = cache_teacher(make_config(tiny_imagefolder, out, max_workers=1))
    assert report["replay_check"]["passed"]
    # Only fp16 storage rounding separates cached and fresh log-probs (half an ulp near 4: 2e-3).
    assert report["replay_check"]["max_abs_error"] < 4e-3
    return out


def test_reference_cache_is_complete_and_matches_dataset(reference_cache: Path, tiny_imagefolder):
    from pld_pipeline.datasets import ImageFolderDataset

    reader = storage.open_cache(str(reference_cache))
    dataset = ImageFolderDataset(tiny_imagefolder)
    reader.validate(dataset_keys=dataset.keys, dataset_fingerprint=dataset.fingerprint())
    assert reader.missing() == []
    assert list(reader.keys) == list(dataset.keys)
    np.testing.assert_array_equal(reader.labels, dataset.labels)
    import torch

    versions = reader.manifest.library_versions
    assert versions["torch"] == torch.__version__
    assert "zarr" in versions
    assert reader.manifest.producer.startswith("prefect flow run ")


def test_two_threads_give_the_same_cache(reference_cache: Path, tiny_imagefolder, tmp_path):
    from flows.cache_teacher import cache_teacher

    out = tmp_path / "cache"
    cache_teacher(make_config(tiny_imagefolder, out, max_workers=2))
    assert_same_cache(reference_cache, out)


def test_local_dask_cluster_gives_the_same_cache(reference_cache: Path, tiny_imagefolder, tmp_path):
    from flows.cache_teacher import cache_teacher

    out = tmp_path / "cache"
    # gpus_per_task: each task needs a 'GPU' resource, which each local worker advertises
    # (only a label on CPU: a task with an unmet restriction would never run).
    cache_teacher(
        make_config(tiny_imagefolder, out, task_runner="dask", dask_workers=2, gpus_per_task=1)
    )
    assert_same_cache(reference_cache, out)


def test_rerun_with_another_manifest_is_refused(reference_cache: Path, tiny_imagefolder):
    from flows.cache_teacher import cache_teacher

    before = {p: p.stat().st_mtime_ns for p in reference_cache.rglob("*") if p.is_file()}
    with pytest.raises(storage.ManifestMismatchError, match="views"):
        cache_teacher(
            make_config(
                tiny_imagefolder,
                reference_cache,
                views={"mode": "replay", "num_views": 3, "seed": 3},
            )
        )
    after = {p: p.stat().st_mtime_ns for p in reference_cache.rglob("*") if p.is_file()}
    assert before == after


def test_stats_artifact_is_published(reference_cache: Path):
    from artifact_lookup import cache_stats_artifact

    _, rows = cache_stats_artifact(reference_cache)
    assert [r["view"] for r in rows] == [0, 1, "all"]
    assert rows[-1]["replay_check"] == "passed"
    assert rows[-1]["label_check"].startswith("passed")  # min_label_agreement 0: never flagged
    reader = storage.open_cache(str(reference_cache))
    for view in (0, 1):  # teacher top-1 recomputed from the cached arrays with plain numpy
        slab = reader.load_view(view)
        top1 = 100.0 * np.mean(slab.topk_idx[:, 0] == slab.label)
        assert rows[view]["teacher_top1_pct"] == pytest.approx(top1, abs=1e-3)
    # The mass outside the top-K at every cached T, from the arrays read with plain zarr
    # (the table shows 4 decimals).
    import zarr

    group = zarr.open_group(str(reference_cache), mode="r")
    temps = group.attrs["pld_cache"]["temperatures"]
    logp, lse = group["topk_logp"][...].astype(np.float64), group["lse"][...].astype(np.float64)
    one = temps.index(1.0)
    for j, t in enumerate(temps):
        p_t = np.exp((logp + lse[..., [one]]) / t - lse[..., [j]])
        tail = 1.0 - p_t.sum(axis=-1)  # [V, N]
        for view in (0, 1):
            assert rows[view][f"tail_mass_T{t:g}"] == pytest.approx(tail[view].mean(), abs=6e-5)
        assert rows[-1][f"tail_mass_T{t:g}"] == pytest.approx(tail.mean(), abs=6e-5)


def test_resume_after_sigkill_equals_uninterrupted(tiny_imagefolder, tmp_path):
    """Kill the CLI mid-pass (a real SIGKILL of its process group), rerun, compare arrays."""
    from flows.cache_teacher import cache_teacher

    def config_for(out: Path) -> CacheConfig:
        return make_config(
            tiny_imagefolder, out, shard_size=1, replay_check_samples=0,
            teacher={"name": "slow_models:slow_tiny_cnn", "num_classes": 10, "input_size": 24},
        )  # fmt: skip

    uninterrupted = tmp_path / "uninterrupted"
    cache_teacher(config_for(uninterrupted))
    out = tmp_path / "cache"
    config_file = tmp_path / "cache.yaml"
    config_file.write_text(yaml.safe_dump(config_for(out).model_dump(mode="json")))
    here = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    env.pop("PREFECT_API_URL", None)  # the child runs on its own temporary server
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "cache", "--config", str(config_file)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    total = 2 * 12
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "zarr.json").exists():
            try:
                done = total - len(storage.open_cache(str(out)).missing())
            except storage.CacheError:
                done = 0  # the group is still being created
            if done >= 4:
                break
        time.sleep(0.1)
    assert proc.poll() is None, "the pass ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = len(storage.open_cache(str(out)).missing())
    assert 0 < left < total
    cache_teacher(config_for(out))
    assert storage.open_cache(str(out)).missing() == []
    assert_same_cache(uninterrupted, out)


def test_corrupt_image_stops_the_pass_naming_it(tiny_imagefolder_corrupt: Path, tmp_path):
    from flows.cache_teacher import cache_teacher
    from pld_pipeline.errors import BadImageError

    with pytest.raises(BadImageError, match="zz_corrupt.jpg"):
        cache_teacher(make_config(tiny_imagefolder_corrupt, tmp_path / "cache"))


def test_skip_bad_images_records_them_and_training_excludes_them(
    tiny_imagefolder_corrupt: Path, tmp_path
):
    from flows.cache_teacher import cache_teacher
    from pld_pipeline.student.data.cached_dataset import good_indices

    out = tmp_path / "cache"
    report = cache_teacher(make_config(tiny_imagefolder_corrupt, out, skip_bad_images=True))
    assert report["bad_keys"] == ["cup/zz_corrupt.jpg"]
    reader = storage.open_cache(str(out))
    assert reader.bad_samples() == ["cup/zz_corrupt.jpg"]
    bad_index = list(reader.keys).index("cup/zz_corrupt.jpg")
    assert reader.bad_mask()[:, bad_index].all()
    kept = good_indices(reader.bad_mask(), reader.num_samples)
    assert bad_index not in kept
    assert len(kept) == reader.num_samples - 1
    # `pld inspect` tells a user before training what the run will skip.
    assert (
        "bad        1 sample(s) could not be decoded and are skipped by training:\n"
        "             cup/zz_corrupt.jpg: cannot be decoded (" in storage.inspect(str(out))
    )


def test_replay_check_fails_when_cached_outputs_were_altered(
    reference_cache: Path, tiny_imagefolder, tmp_path
):
    """Shift every cached log-prob of view 0 by -0.5 nats (still a valid cache): the check,
    recomputing the teacher, must notice and name the error."""
    import shutil

    import zarr

    from pld_pipeline.errors import ReplayCheckError
    from pld_pipeline.teacher import replay_check

    altered = tmp_path / "altered"
    shutil.copytree(reference_cache, altered)
    logp = zarr.open_group(str(altered), mode="r+")["topk_logp"]
    logp[0] = logp[0] - np.float16(0.5)
    config = make_config(tiny_imagefolder, altered, replay_check_samples=12)
    with pytest.raises(ReplayCheckError, match=r"differ by up to 0\.5"):
        replay_check.replay_check(config, seed=0)
    # The untouched cache passes the same check.
    assert replay_check.replay_check(
        make_config(tiny_imagefolder, reference_cache, replay_check_samples=12)
    ).passed
