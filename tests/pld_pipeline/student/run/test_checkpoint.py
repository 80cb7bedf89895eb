"""Checkpoints: atomic writes, weights_only loads, RNG states restored exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from pld_pipeline.errors import CheckpointError
from pld_pipeline.student.run.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def test_round_trip_with_weights_only(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "best": {"top1": 51.5, "epoch": 2},
        "history": [{"epoch": 0, "x": None}],
        "rng": capture_rng_state(),
    }
    path = tmp_path / "ck.pt"
    save_checkpoint(path, state)
    loaded = torch.load(path, weights_only=True)  # the strict loader must accept it
    assert loaded["epoch"] == 3
    assert loaded["best"] == {"top1": 51.5, "epoch": 2}
    for k, v in model.state_dict().items():
        assert torch.equal(load_checkpoint(path)["model"][k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left


def test_failed_save_keeps_previous_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"epoch": 2, "bad": Unpicklable()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_missing_and_corrupt_checkpoints_raise(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(bad)


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "obj": np.random.default_rng(0)}, path)  # arbitrary objects
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def draws(gen: torch.Generator):
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        np.random.randn(1).tolist(),
        [random.random() for _ in range(3)],
        torch.rand(2, generator=gen).tolist(),
    )


def test_rng_states_restore_exactly(tmp_path):
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    state = capture_rng_state({"sampler": gen})
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    first = draws(gen)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], {"sampler": gen})
    assert draws(gen) == first
