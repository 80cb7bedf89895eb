"""One device and AMP policy for both wings: one vocabulary, one resolver, the old word an alias."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from train_testlib import train_config

from pld_pipeline.configs.base import AMP_NAMES
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.configs.loading import validate_config
from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.device_policy import resolve_amp
from pld_pipeline.errors import CheckpointError, ConfigError
from pld_pipeline.student.run.ddp import DistContext
from pld_pipeline.student.run.placement import make_placement
from pld_pipeline.student.run.run_dir import RunDir
from pld_pipeline.teacher import compute as teacher_pass

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_both_wings_share_one_vocabulary_and_one_resolver():
    assert AMP_NAMES == ("auto", "bf16", "fp16", "off")
    assert teacher_pass.resolve_amp is resolve_amp  # the teacher pass resolves with it
    for model in (TrainConfig, CacheConfig):
        field = model.model_fields["amp"]
        assert field.default == "auto"
        assert all(f"'{word}'" in field.description for word in AMP_NAMES)


@pytest.mark.parametrize("bf16_supported", [True, False])
def test_auto_means_bf16_where_the_gpu_supports_it_else_fp16(monkeypatch, bf16_supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    expected = torch.bfloat16 if bf16_supported else torch.float16
    assert resolve_amp("auto", CUDA) == expected


def test_words_resolve_to_autocast_dtypes_on_cuda_and_to_fp32_on_the_cpu(caplog):
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None, None: None}
    for word, dtype in table.items():
        assert resolve_amp(word, CUDA) == dtype
    with caplog.at_level(logging.INFO, logger="pld_pipeline.device_policy"):
        assert [resolve_amp(word, CPU) for word in AMP_NAMES] == [None] * 4
    assert "applies on CUDA only" in caplog.text
    assert resolve_amp(torch.bfloat16, CUDA) == torch.bfloat16


def test_the_old_student_word_none_reads_as_off_with_a_deprecation_line(caplog):
    with caplog.at_level(logging.WARNING, logger="pld_pipeline"):
        old = train_config("c.zarr", "data", "run", amp="none")
    assert old.amp == "off"
    assert "amp='none' is deprecated" in caplog.text
    assert "'off'" in caplog.text
    for device in (CPU, CUDA):
        assert resolve_amp("none", device) == resolve_amp("off", device)
    placement = make_placement(old, DistContext())
    assert placement.amp_dtype is None
    assert not placement.grad_scaler().is_enabled()


@pytest.mark.parametrize("word", ["fp8", "None", "bfloat16"])
def test_an_unknown_word_is_one_clear_config_error(word):
    with pytest.raises(ConfigError) as info:
        validate_config(TrainConfig, {"run_dir": "r", "dataset_root": "d", "amp": word})
    assert "\n" not in str(info.value)
    assert "amp" in str(info.value)
    assert "'bf16'" in str(info.value)
    with pytest.raises(ConfigError, match=r"Unknown amp .*'auto', 'bf16', 'fp16', 'off'"):
        resolve_amp(word, CUDA)


def test_a_run_dir_written_with_amp_none_still_resumes(tmp_path):
    """config.json of a run started before the vocabularies merged says amp 'none'."""
    new = train_config("c.zarr", "data", tmp_path / "run", amp="off", resume=True)
    run = RunDir(new.run_dir)
    stored = new.model_dump(mode="json")
    stored["amp"] = "none"
    run.path.mkdir()
    run.config.write_text(json.dumps(stored))
    run.checkpoint.write_bytes(b"")
    assert run.prepare(new, write=False) is True
    old_spelling = train_config("c.zarr", "data", tmp_path / "run", amp="none", resume=True)
    assert run.prepare(old_spelling, write=False) is True
    changed = train_config("c.zarr", "data", tmp_path / "run", amp="bf16", resume=True)
    with pytest.raises(CheckpointError, match=r"amp: 'off' -> 'bf16'"):
        run.prepare(changed, write=False)
