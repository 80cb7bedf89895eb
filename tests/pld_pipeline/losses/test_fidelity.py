"""What compact targets keep of a dense teacher (pld_pipeline.losses.fidelity), against the
float64 references of loss_reference.py built from the dense logits."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from loss_reference import (
    cached_from_dense,
    dkd_reference,
    kd_reference,
    kept_positions,
    pld_reference,
    rows,
    softmax,
    teacher_order,
    teacher_probs,
    value_and_grad,
)

from pld_pipeline.losses import make_loss
from pld_pipeline.losses.fidelity import (
    compact_targets,
    gradient_error,
    reconstruction_kl,
    top_k_tail_mass,
)

B, C, TEMPS = 6, 12, (1.0, 2.0, 4.0)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(3)
    teacher = torch.randn(B, C, generator=gen, dtype=torch.float64) * 2.5
    student = torch.randn(B, C, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 3, 5, 5, 11, 2])
    return teacher, student, labels


@pytest.mark.parametrize("k", [1, 3, C - 1])
def test_compact_targets_are_the_reference_top_k_record(batch, k):
    teacher, _, labels = batch
    got = compact_targets(teacher, labels, k, TEMPS)
    want = cached_from_dense(teacher, labels, k, TEMPS)
    assert torch.equal(got.topk_idx, want.topk_idx)
    for name in ("topk_logp", "lse", "gt_logit"):
        assert torch.allclose(getattr(got, name), getattr(want, name), rtol=0, atol=1e-12), name


@pytest.mark.parametrize("temperature", TEMPS)
def test_tail_mass_and_kl_of_the_reconstruction(batch, temperature):
    teacher, _, labels = batch
    for k in (1, 4, C - 1):
        tail = top_k_tail_mass(teacher, k, temperature)
        kl = reconstruction_kl(teacher, compact_targets(teacher, labels, k, TEMPS), labels,
                               temperature)  # fmt: skip
        recon = teacher_probs(teacher, labels, temperature, k=k)  # exact kept, rest even
        for b, row in enumerate(rows(teacher)):
            p = softmax(row, temperature)
            kept = sum(p[c] for c in teacher_order(row)[:k])
            assert abs(float(tail[b]) - (1.0 - kept)) < 1e-12
            want = sum(p[c] * math.log(p[c] / recon[b][c]) for c in range(C) if p[c] > 0)
            assert abs(float(kl[b]) - want) < 1e-10
        assert k < C - 1 or float(kl.max()) < 1e-12  # K = C - 1 leaves nothing to spread


def _reference_error(grad_dense, grad_compact) -> float:
    return float((grad_compact - grad_dense).norm() / grad_dense.norm())


@pytest.mark.parametrize("k", [1, 3, 8])
def test_gradient_error_of_kd_dkd_and_pld_against_the_references(batch, k):
    teacher, student, labels = batch
    compact = compact_targets(teacher, labels, k, TEMPS)
    t = 2.0
    for name, reference, params in (
        ("kd", kd_reference, {"temperature": t, "ce_weight": 0.1}),
        ("dkd", dkd_reference, {"temperature": t, "alpha": 0.5, "beta": 0.5, "ce_weight": 1.0}),
    ):
        dense_probs = teacher_probs(teacher, labels, t)
        cut_probs = teacher_probs(teacher, labels, t, k=k)
        _, g_dense = value_and_grad(
            functools.partial(reference, probs=dense_probs, labels=labels, **params), student
        )
        _, g_cut = value_and_grad(
            functools.partial(reference, probs=cut_probs, labels=labels, **params), student
        )
        got = gradient_error(make_loss(name, **params), student, teacher, compact, labels)
        assert got == pytest.approx(_reference_error(g_dense, g_cut), rel=1e-6, abs=1e-12), name
    _, g_dense = pld_reference(student, teacher, labels, temperature=t)
    keep = kept_positions(teacher, labels, k)
    _, g_cut = pld_reference(student, teacher, labels, temperature=t, keep=keep)
    got = gradient_error(make_loss("pld", temperature=t), student, teacher, compact, labels)
    want = _reference_error(torch.tensor(g_dense), torch.tensor(g_cut))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_ce_is_the_control_with_no_error(batch):
    teacher, student, labels = batch
    compact = compact_targets(teacher, labels, 1, TEMPS)
    assert gradient_error(make_loss("ce"), student, teacher, compact, labels) == 0.0
