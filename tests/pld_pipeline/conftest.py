"""Fixtures of the training tests: learnable tiny image folders and tiny caches built in the test.

- `color_folder`: 3 classes x 8 images (24), sides 20-40 px; each class has its own base
  colour, so a tiny CNN learns it in a few steps. `color_val_folder`: 3 x 3 more.
- `replay_cache`, `full_cache`, `eval_cache`: caches of `color_folder` (train_testlib.make_cache).

Helpers (make_cache, train_config, ...) live in train_testlib.py: import them from there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from train_testlib import build_color_folder, make_cache


@pytest.fixture(scope="session")
def color_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_color_folder(tmp_path_factory.mktemp("color_train"), 8, seed=0)


@pytest.fixture(scope="session")
def color_val_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_color_folder(tmp_path_factory.mktemp("color_val"), 3, seed=1)


@pytest.fixture(scope="session")
def replay_cache(tmp_path_factory: pytest.TempPathFactory, color_folder: Path) -> Path:
    """Top-4 of 6 classes, 2 replay views, temperatures 1, 2, 4."""
    return make_cache(tmp_path_factory.mktemp("caches") / "replay.zarr", color_folder)


@pytest.fixture(scope="session")
def full_cache(tmp_path_factory: pytest.TempPathFactory, color_folder: Path) -> Path:
    """Full logits, 1 replay view."""
    return make_cache(
        tmp_path_factory.mktemp("caches") / "full.zarr", color_folder, fmt="full", num_views=1
    )


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory, color_folder: Path) -> Path:
    """The teacher's eval view only."""
    return make_cache(
        tmp_path_factory.mktemp("caches") / "eval.zarr", color_folder, mode="eval", num_views=1
    )
