"""KD, DIST, DKD and CE against plain float64 references, from dense and compact targets."""

from __future__ import annotations

import functools

import pytest
import torch
from loss_reference import (
    cached_from_dense,
    ce_reference,
    dist_reference,
    dkd_reference,
    kd_reference,
    rel_error,
    teacher_probs,
    value_and_grad,
)

from pld_pipeline.losses import ce_loss, dist_loss, dkd_loss, kd_loss
from pld_pipeline.losses.teacher import teacher_log_probs

CASES = {
    "kd": (kd_loss, kd_reference, {"temperature": 4.0, "ce_weight": 0.1}),
    "kd_pure": (kd_loss, kd_reference, {"temperature": 2.0, "ce_weight": 0.0}),
    "dist": (
        dist_loss,
        dist_reference,
        {"temperature": 1.0, "beta": 0.45, "gamma": 0.45, "ce_weight": 0.1},
    ),
    "dist_t2": (
        dist_loss,
        dist_reference,
        {"temperature": 2.0, "beta": 1.0, "gamma": 2.0, "ce_weight": 0.0},
    ),
    "dkd": (
        dkd_loss,
        dkd_reference,
        {"temperature": 4.0, "alpha": 1.0, "beta": 8.0, "ce_weight": 1.0},
    ),
    "dkd_t1": (
        dkd_loss,
        dkd_reference,
        {"temperature": 1.0, "alpha": 0.5, "beta": 2.0, "ce_weight": 0.0},
    ),
}


def make_batch(batch, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    student = 1.5 * torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    teacher = 2.0 * torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return student, teacher, labels


def run(fn, student, targets, labels, **params):
    s = student.detach().clone().requires_grad_(True)
    loss = fn(s, targets, labels, **params)
    loss.backward()
    return loss, s.grad


def reference(ref, student, probs, labels, params):
    return value_and_grad(lambda s: ref(s, probs, labels, **params), student)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("shape", [(5, 7), (1, 2), (4, 2)])
def test_dense_matches_reference(name, shape):
    fn, ref, params = CASES[name]
    student, teacher, labels = make_batch(*shape, seed=shape[1])
    loss, grad = run(fn, student, teacher, labels, **params)
    ref_loss, ref_grad = reference(
        ref, student, teacher_probs(teacher, labels, params["temperature"]), labels, params
    )
    assert rel_error(loss.item(), ref_loss) <= 1e-6
    assert rel_error(grad, ref_grad) <= 1e-6


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("k", [2, 6])
def test_compact_matches_reference_with_even_spread(name, k):
    fn, ref, params = CASES[name]
    temperature = params["temperature"]
    student, teacher, labels = make_batch(5, 9, seed=20 + k)
    labels[0] = teacher[0].argmax()  # label inside the top-K
    labels[1] = teacher[1].argmin()  # label outside it
    cached = cached_from_dense(teacher, labels, k, temperatures=tuple({1.0, temperature}))
    loss, grad = run(fn, student, cached, labels, **params)
    probs = teacher_probs(teacher, labels, temperature, k=k)
    ref_loss, ref_grad = reference(ref, student, probs, labels, params)
    assert rel_error(loss.item(), ref_loss) <= 1e-6
    assert rel_error(grad, ref_grad) <= 1e-6


@pytest.mark.parametrize("name", ["kd", "dist", "dkd"])
def test_float32_and_half_students(name):
    fn, ref, params = CASES[name]
    student, teacher, labels = make_batch(6, 20, seed=30)
    probs = teacher_probs(teacher, labels, params["temperature"])
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        s = student.to(dtype)
        loss, grad = run(fn, s, teacher.float(), labels, **params)
        assert loss.dtype == torch.float32
        assert grad.dtype == dtype
        ref_loss, ref_grad = reference(ref, s.double(), probs, labels, params)
        assert rel_error(loss.item(), ref_loss) <= tol
        assert rel_error(grad, ref_grad) <= tol


def test_ce_matches_reference_and_ignores_targets():
    student, teacher, labels = make_batch(4, 6, seed=31)
    for smoothing in (0.0, 0.1):
        ref_loss, ref_grad = value_and_grad(
            lambda s, sm=smoothing: ce_reference(s, labels, sm), student
        )
        for targets in (teacher, None, cached_from_dense(teacher, labels, 2)):
            loss, grad = run(ce_loss, student, targets, labels, label_smoothing=smoothing)
            assert rel_error(loss.item(), ref_loss) <= 1e-6
            assert rel_error(grad, ref_grad) <= 1e-6


@pytest.mark.parametrize("name", ["kd", "dist", "dkd"])
def test_gradcheck(name):
    fn, _, params = CASES[name]
    student, teacher, labels = make_batch(3, 5, seed=32)
    cached = cached_from_dense(teacher, labels, 2, temperatures=(1.0, params["temperature"]))
    s = student.clone().requires_grad_(True)
    for targets in (teacher, cached):
        assert torch.autograd.gradcheck(
            functools.partial(lambda x, t: fn(x, t, labels, **params), t=targets), (s,)
        )


def test_compact_teacher_distribution():
    _, teacher, labels = make_batch(4, 10, seed=33)
    labels[0] = teacher[0].argmax()
    for k in (1, 4, 9, 10):
        cached = cached_from_dense(teacher, labels, k, temperatures=(1.0, 3.0))
        got = teacher_log_probs(cached, labels, 10, 3.0, torch.float64).exp()
        want = teacher_probs(teacher, labels, 3.0, k=k if k < 9 else None)
        assert rel_error(got, want) <= 1e-12
        assert torch.allclose(got.sum(dim=1), torch.ones(4, dtype=torch.float64))


def test_dkd_teacher_sure_of_the_label():
    # p_t(label) = 1 exactly: TCKD's rest term and NCKD's teacher are degenerate, no NaN.
    student, _, labels = make_batch(3, 5, seed=34)
    teacher = torch.zeros(3, 5, dtype=torch.float64)
    teacher[torch.arange(3), labels] = 1000.0
    for targets in (teacher, cached_from_dense(teacher, labels, 2)):
        loss, grad = run(dkd_loss, student, targets, labels, temperature=1.0)
        assert torch.isfinite(loss)
        assert torch.isfinite(grad).all()
