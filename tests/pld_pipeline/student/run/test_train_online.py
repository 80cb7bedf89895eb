"""Online mode: the live teacher sees the cached views and gives the cached targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pld_test_models import fixed_teacher
from train_testlib import TEACHER_SIZE, make_cache, train_config

import storage
from pld_pipeline.configs.cache import TeacherConfig
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.errors import ConfigError
from pld_pipeline.student.data.cached_dataset import StoredViews, StudentViewDataset, gather_targets
from pld_pipeline.student.run.online_teacher import OnlineTeacher
from pld_pipeline.student.run.train import fit

TEACHER = {
    "name": "pld_test_models:fixed_teacher",
    "num_classes": 6,
    "input_size": TEACHER_SIZE,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "interpolation": "bilinear",
}


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory, color_folder):
    """A 2-view replay cache whose targets come from `fixed_teacher` itself."""
    model = fixed_teacher(6)
    return make_cache(
        tmp_path_factory.mktemp("online") / "c.zarr",
        color_folder,
        teacher=lambda x, labels: model(x),
    )


def test_live_targets_equal_cached_targets(teacher_cache, color_folder):
    reader = storage.open_cache(teacher_cache)
    teacher = OnlineTeacher(
        TeacherConfig(**TEACHER), torch.device("cpu"), 6, "compact", 4, reader.manifest.temperatures
    )
    images = ImageFolderDataset(color_folder)
    for view in (0, 1):
        slab = reader.load_view(view)
        refs = StoredViews(slab.crop, slab.flip).refs()
        data = StudentViewDataset(images, 16, teacher_size=teacher.input_size)
        items = [data[(i, (refs[i],))] for i in range(len(images))]
        labels = torch.tensor([it[1] for it in items])
        live = teacher.targets(torch.cat([it[3] for it in items]), labels)
        cached = gather_targets(slab, np.arange(len(images)), "compact")
        assert torch.equal(live.topk_idx, cached.topk_idx)
        torch.testing.assert_close(
            live.topk_logp, cached.topk_logp, atol=2e-3, rtol=1e-3
        )  # fp16 store
        torch.testing.assert_close(live.lse, cached.lse, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(live.gt_logit, cached.gt_logit, atol=1e-5, rtol=1e-5)


def test_online_fit_runs_and_reports(teacher_cache, color_folder, tmp_path):
    r = fit(
        train_config(
            teacher_cache,
            color_folder,
            tmp_path / "on",
            online_teacher=TEACHER,
            loss={"name": "kd", "temperature": 3.0},
        )
    )  # any T: the teacher is live
    assert r.online
    assert r.views_match
    assert r.history[-1]["target_time_s"] > 0
    cut = fit(
        train_config(
            teacher_cache,
            color_folder,
            tmp_path / "cut",
            online_teacher=TEACHER,
            epochs=1,
            loss={"name": "pld"},
            k=2,
            views_per_image=2,  # the teacher scores both views of each decoded image
        )
    )
    assert cut.k == 2
    assert cut.mean_dropped_weight is not None
    assert cut.samples_seen == 2 * 24
    assert cut.history[0]["views"] == [0, 1]


def test_online_with_eval_cache_shares_the_students_views(color_folder, tmp_path):
    cache = make_cache(tmp_path / "eval.zarr", color_folder, mode="eval", num_views=1)
    r = fit(train_config(cache, color_folder, tmp_path / "r", online_teacher=TEACHER, epochs=1))
    assert r.views_match is True


def test_online_teacher_must_have_the_caches_classes(teacher_cache, color_folder, tmp_path):
    with pytest.raises(ConfigError, match="has 4 classes but the cache has 6"):
        fit(
            train_config(
                teacher_cache,
                color_folder,
                tmp_path / "r",
                online_teacher={**TEACHER, "num_classes": 4},
            )
        )
