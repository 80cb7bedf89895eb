"""Bad inputs get a clear LossInputError; CachedTargets and make_loss behave as documented."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from loss_reference import cached_from_dense

from pld_pipeline.losses import (
    LOSS_NAMES,
    CachedTargets,
    LossInputError,
    TemperatureNotCachedError,
    ce_loss,
    dist_loss,
    dkd_loss,
    kd_loss,
    make_loss,
    pld_loss,
)

B, C, K = 3, 6, 2
FUNCTIONS = {"ce": ce_loss, "kd": kd_loss, "dist": dist_loss, "dkd": dkd_loss, "pld": pld_loss}
# Losses that read the teacher (CE only checks it when given).
TEACHER_LOSSES = ["kd", "dist", "dkd", "pld"]


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(B, C, generator=gen)
    teacher = torch.randn(B, C, generator=gen)
    labels = torch.tensor([0, 5, 2])
    return student, teacher, labels


def cached(teacher, labels, **changes):
    base = cached_from_dense(teacher, labels, K, temperatures=(1.0, 4.0))
    base = CachedTargets(
        base.topk_idx, base.topk_logp.float(), base.lse.float(), (1.0, 4.0), base.gt_logit.float()
    )
    return dataclasses.replace(base, **changes)


def poisoned(tensor, value):
    out = tensor.clone()
    out.view(-1)[1] = value
    return out


# (id, build(student, teacher, labels) -> (student, targets, labels), message fragment)
BAD = [
    ("label_negative", lambda s, t, y: (s, t, torch.tensor([0, -1, 2])), "label -1 is out of"),
    ("label_too_big", lambda s, t, y: (s, t, torch.tensor([0, C, 2])), f"label {C} is out of"),
    ("label_float", lambda s, t, y: (s, t, y.float()), "integer tensor"),
    ("labels_short", lambda s, t, y: (s, t, y[:2]), "labels must have shape [B] = [3]"),
    ("student_1d", lambda s, t, y: (s[0], t, y), "shape [B, C]"),
    ("student_int", lambda s, t, y: (s.long(), t, y), "floating point"),
    ("teacher_shape", lambda s, t, y: (s, t[:, :4], y), "the student's shape"),
    ("teacher_batch", lambda s, t, y: (s, t[:2], y), "the student's shape"),
    ("teacher_nan", lambda s, t, y: (s, poisoned(t, math.nan), y), "non-finite value (nan)"),
    ("teacher_inf", lambda s, t, y: (s, poisoned(t, math.inf), y), "non-finite value (inf)"),
    (
        "teacher_fp16_inf",
        lambda s, t, y: (s, poisoned(t.half(), -math.inf), y),
        "non-finite value (-inf)",
    ),
    (
        "cached_logp_nan",
        lambda s, t, y: (s, cached(t, y, topk_logp=poisoned(cached(t, y).topk_logp, math.nan)), y),
        "topk_logp holds a non-finite",
    ),
    (
        "cached_lse_inf",
        lambda s, t, y: (s, cached(t, y, lse=poisoned(cached(t, y).lse, math.inf)), y),
        "lse holds a non-finite",
    ),
    (
        "cached_gt_nan",
        lambda s, t, y: (s, cached(t, y, gt_logit=poisoned(cached(t, y).gt_logit, math.nan)), y),
        "gt_logit holds a non-finite",
    ),
    (
        "cached_k_above_c",
        lambda s, t, y: (
            s[:, :2],
            cached(t, y, topk_idx=torch.tensor([[0, 1, 0]] * B), topk_logp=torch.zeros(B, 3)),
            y % 2,
        ),
        "K = 3 classes per example but the student has only C = 2",
    ),
    (
        "cached_idx_range",
        lambda s, t, y: (s, cached(t, y, topk_idx=poisoned(cached(t, y).topk_idx, C)), y),
        f"topk_idx holds class {C}",
    ),
    (
        "cached_batch",
        lambda s, t, y: (s[:2], cached(t, y), y[:2]),
        "cached targets hold 3 examples but student_logits has B = 2",
    ),
    ("targets_list", lambda s, t, y: (s, t.tolist(), y), "dense teacher logits [B, C] or"),
]


@pytest.mark.parametrize("name", TEACHER_LOSSES)
@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(batch, name, case):
    _, build, fragment = case
    student, targets, labels = build(*batch)
    with pytest.raises(LossInputError, match=re.escape(fragment)):
        FUNCTIONS[name](student, targets, labels)


@pytest.mark.parametrize("case", BAD[:8], ids=[b[0] for b in BAD[:8]])
def test_ce_checks_labels_and_given_targets(batch, case):
    student, targets, labels = case[1](*batch)
    with pytest.raises(LossInputError):
        ce_loss(student, targets, labels)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"topk_logp": torch.zeros(B, K + 1)}, "topk_logp must have the shape of topk_idx"),
        ({"topk_idx": torch.zeros(B, K)}, "topk_idx must be an integer tensor"),
        ({"topk_idx": torch.zeros(B, dtype=torch.long)}, "topk_idx must have shape [B, K]"),
        ({"lse": torch.zeros(B, 3)}, "lse must have shape [B, nT] = [3, 2]"),
        ({"gt_logit": torch.zeros(B + 1)}, "gt_logit must have shape [B] = [3]"),
        ({"temperatures": (1.0, -2.0)}, "temperatures must be a non-empty tuple"),
    ],
)
def test_cached_targets_shape_errors(batch, changes, fragment):
    _, teacher, labels = batch
    with pytest.raises(LossInputError, match=re.escape(fragment)):
        cached(teacher, labels, **changes)


@pytest.mark.parametrize("name", ["kd", "dist", "dkd", "pld"])
@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, "hot"])
def test_bad_temperature(batch, name, temperature):
    student, teacher, labels = batch
    with pytest.raises(LossInputError, match="temperature"):
        FUNCTIONS[name](student, teacher, labels, temperature=temperature)


@pytest.mark.parametrize("name", ["kd", "dist", "dkd", "pld"])
def test_uncached_temperature(batch, name):
    student, teacher, labels = batch
    with pytest.raises(TemperatureNotCachedError, match=r"temperature 2\.5 is not cached.*1, 4"):
        FUNCTIONS[name](student, cached(teacher, labels), labels, temperature=2.5)


def test_cached_targets_methods(batch):
    _, teacher, labels = batch
    targets = cached(teacher, labels)
    assert targets.batch_size == B
    assert targets.k == K
    assert targets.temperatures == (1.0, 4.0)
    assert torch.equal(targets.lse_at(4.0), targets.lse[:, 1])
    assert torch.equal(targets.lse_at(4.0 + 1e-9), targets.lse[:, 1])
    with pytest.raises(TemperatureNotCachedError, match="cached: 1, 4"):
        targets.lse_at(3.0)
    assert not isinstance(TemperatureNotCachedError("x"), KeyError)
    short = targets.truncate(1)
    assert short.k == 1
    assert torch.equal(short.topk_idx, targets.topk_idx[:, :1])
    with pytest.raises(LossInputError, match="1 <= k <= K = 2"):
        targets.truncate(3)
    moved = targets.to("cpu")
    assert torch.equal(moved.topk_logp, targets.topk_logp)
    assert moved.temperatures == (1.0, 4.0)


def test_make_loss(batch):
    student, teacher, labels = batch
    assert set(LOSS_NAMES) == set(FUNCTIONS)
    for name in LOSS_NAMES:
        fn = make_loss(name)
        assert fn.name == name
        assert fn.last_dropped_weight is None
        assert torch.equal(fn(student, teacher, labels), FUNCTIONS[name](student, teacher, labels))
    kd = make_loss("kd", temperature=2.0, ce_weight=0.5)
    assert kd.params == {"temperature": 2.0, "ce_weight": 0.5}
    assert torch.equal(
        kd(student, teacher, labels), kd_loss(student, teacher, labels, 2.0, ce_weight=0.5)
    )
    assert make_loss("dist").params == {
        "temperature": 1.0,
        "beta": 0.45,
        "gamma": 0.45,
        "ce_weight": 0.1,
    }
    assert make_loss("dkd").params == {
        "temperature": 1.0,
        "alpha": 0.5,
        "beta": 0.5,
        "ce_weight": 1.0,
    }


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("mse", {}, "unknown loss 'mse'; choose one of ce, kd, dist, dkd, pld"),
        ("kd", {"alpha": 1.0}, "loss 'kd' has no parameter 'alpha'"),
        ("pld", {"ce_weight": 0.1}, "loss 'pld' has no parameter 'ce_weight'"),
        ("kd", {"temperature": 0}, "temperature must be finite and > 0"),
        ("kd", {"ce_weight": 1.5}, "ce_weight must be a finite number in [0, 1.0]"),
        ("dkd", {"beta": -1}, "beta must be a finite number in >= 0"),
        ("ce", {"label_smoothing": 2}, "label_smoothing must be a finite number in [0, 1.0]"),
    ],
)
def test_make_loss_errors(name, params, fragment):
    with pytest.raises(LossInputError, match=re.escape(fragment)):
        make_loss(name, **params)


def test_repeated_class_in_a_full_cache(batch):
    # K = C - 1 finds the one missing class from the index sum; repeats break that.
    student, teacher, labels = batch
    targets = cached_from_dense(teacher, labels, C - 1)
    bad = dataclasses.replace(targets, topk_idx=torch.full_like(targets.topk_idx, C - 1))
    with pytest.raises(LossInputError, match="must list distinct classes"):
        pld_loss(student.double(), bad, labels)
