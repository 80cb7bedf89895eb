"""PLD loss against the plain float64 reference: dense, compact, truncation, dtypes, edges."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from loss_reference import (
    cached_from_dense,
    ce_reference,
    dropped_weight,
    kept_positions,
    pld_ranking,
    pld_reference,
    rel_error,
    value_and_grad,
)

from pld_pipeline.losses import (
    TemperatureNotCachedError,
    make_loss,
    pld_dropped_weight,
    pld_loss,
)
from pld_pipeline.losses.ranking import label_first_order


def make_batch(batch, classes, seed, dtype=torch.float64, teacher_scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    student = (1.5 * torch.randn(batch, classes, generator=gen, dtype=torch.float64)).to(dtype)
    teacher = teacher_scale * torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    return student, teacher, labels


def loss_and_grad(student, targets, labels, **kw):
    s = student.detach().clone().requires_grad_(True)
    loss = pld_loss(s, targets, labels, **kw)
    loss.backward()
    return loss, s.grad


def assert_matches(student, targets, labels, temperature, keep=None, tol=1e-6, teacher=None):
    loss, grad = loss_and_grad(student, targets, labels, temperature=temperature)
    ref_loss, ref_grad = pld_reference(student, teacher, labels, temperature, keep)
    assert rel_error(loss.item(), ref_loss) <= tol
    assert rel_error(grad, ref_grad) <= tol


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("shape", [(5, 9), (1, 2), (3, 2), (2, 31)])
def test_dense_matches_reference_float64(shape, temperature):
    student, teacher, labels = make_batch(*shape, seed=shape[1])
    assert_matches(student, teacher, labels, temperature, teacher=teacher)


def test_dense_matches_reference_float32():
    student, teacher, labels = make_batch(6, 40, seed=1, dtype=torch.float32)
    teacher32 = teacher.float()
    loss, grad = loss_and_grad(student, teacher32, labels, temperature=2.0)
    assert loss.dtype == torch.float32
    assert grad.dtype == torch.float32
    ref_loss, ref_grad = pld_reference(student, teacher32, labels, 2.0)
    assert rel_error(loss.item(), ref_loss) <= 1e-4
    assert rel_error(grad, ref_grad) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_student_logits_computed_in_float32(dtype):
    student, teacher, labels = make_batch(4, 12, seed=2, dtype=dtype)
    loss, grad = loss_and_grad(student, teacher.float(), labels)
    assert loss.dtype == torch.float32
    assert grad.dtype == dtype
    # The reference sees the same (rounded) logits; only the returned gradient is rounded.
    ref_loss, ref_grad = pld_reference(student.double(), teacher, labels)
    assert rel_error(loss.item(), ref_loss) <= 1e-4
    assert rel_error(grad, ref_grad) <= (1e-3 if dtype == torch.float16 else 8e-3)
    cached = cached_from_dense(teacher, labels, 5, logp_dtype=torch.float16)
    loss_c, grad_c = loss_and_grad(student, cached, labels)
    assert loss_c.dtype == torch.float32
    assert grad_c.dtype == dtype
    assert torch.isfinite(grad_c).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_compact_full_ranking_equals_dense(temperature):
    student, teacher, labels = make_batch(6, 10, seed=3)
    labels[0] = teacher[0].argmax()  # label inside the cache ...
    labels[1] = teacher[1].argmin()  # ... and the teacher's last class
    dense = loss_and_grad(student, teacher, labels, temperature=temperature)
    for k in (9, 10):  # K = C - 1 and K = C
        cached = cached_from_dense(teacher, labels, k, temperatures=(1.0, 2.0))
        loss, grad = loss_and_grad(student, cached, labels, temperature=temperature)
        assert rel_error(loss.item(), dense[0].item()) <= 1e-6
        assert rel_error(grad, dense[1]) <= 1e-6


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_compact_truncated_matches_reference(k, temperature):
    student, teacher, labels = make_batch(6, 12, seed=10 + k)
    labels[0] = teacher[0].argmax()  # label inside the top-K
    labels[1] = teacher[1].argmin()  # label outside it
    keep = kept_positions(teacher, labels, k)
    assert keep[0] == k
    assert keep[1] == k + 1
    cached = cached_from_dense(teacher, labels, k, temperatures=(1.0, 4.0))
    assert_matches(student, cached, labels, temperature, keep=keep, teacher=teacher)


def test_compact_truncated_float32_and_fp16_cache():
    student, teacher, labels = make_batch(8, 50, seed=4, dtype=torch.float32)
    cached = cached_from_dense(teacher, labels, 10, temperatures=(1.0, 2.0))
    cached32 = type(cached)(
        cached.topk_idx.int(),
        cached.topk_logp.float(),
        cached.lse.float(),
        cached.temperatures,
        cached.gt_logit.float(),
    )
    loss, grad = loss_and_grad(student, cached32, labels, temperature=2.0)
    ref_loss, ref_grad = pld_reference(
        student, teacher, labels, 2.0, kept_positions(teacher, labels, 10)
    )
    assert rel_error(loss.item(), ref_loss) <= 1e-4
    assert rel_error(grad, ref_grad) <= 1e-4


def test_teacher_ties_break_to_lower_class_index():
    student, _, labels = make_batch(5, 8, seed=5)
    teacher = torch.tensor(
        [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]] + [[2.0, 0.0, 2.0, 1.0, 0.0, 2.0, 1.0, 0.0]] * 4,
        dtype=torch.float64,
    )
    labels[:] = torch.tensor([3, 2, 7, 0, 4])
    assert_matches(student, teacher, labels, 1.0, teacher=teacher)
    # The compact form follows the cache's order, built here with the same tie rule.
    for k in (3, 7):
        cached = cached_from_dense(teacher, labels, k)
        keep = kept_positions(teacher, labels, k)
        assert_matches(student, cached, labels, 1.0, keep=keep, teacher=teacher)


def test_translation_invariance_and_zero_gradient_sum():
    student, teacher, labels = make_batch(4, 15, seed=6)
    cached = cached_from_dense(teacher, labels, 4)
    for targets in (teacher, cached):
        loss, grad = loss_and_grad(student, targets, labels)
        shifted, _ = loss_and_grad(student + 7.25, targets, labels)
        assert abs(loss.item() - shifted.item()) <= 1e-12 * abs(loss.item())
        assert grad.sum(dim=1).abs().max().item() <= 1e-15 * 15


def test_one_hot_weights_give_cross_entropy():
    student, _, labels = make_batch(4, 6, seed=7)
    # Teacher puts all its mass on the label (exp(-1000) is exactly 0): a = (1, 0, ..., 0).
    teacher = torch.zeros(4, 6, dtype=torch.float64)
    teacher[torch.arange(4), labels] = 1000.0
    ce, ce_grad = value_and_grad(lambda s: ce_reference(s, labels), student)
    for targets in (teacher, cached_from_dense(teacher, labels, 2)):
        loss, grad = loss_and_grad(student, targets, labels)
        assert rel_error(loss.item(), ce) <= 1e-12
        assert rel_error(grad, ce_grad) <= 1e-12


def test_temperature_touches_only_the_teacher():
    # One-hot teacher at any T: the loss stays CE of the undivided student logits.
    student, _, labels = make_batch(3, 5, seed=8)
    teacher = torch.zeros(3, 5, dtype=torch.float64)
    teacher[torch.arange(3), labels] = 5000.0
    ce, _ = value_and_grad(lambda s: ce_reference(s, labels), student)
    assert rel_error(pld_loss(student, teacher, labels, temperature=4.0).item(), ce) <= 1e-12


def test_gradcheck_dense_and_compact():
    student, teacher, labels = make_batch(3, 6, seed=9)
    labels[0] = teacher[0].argmax()
    s = student.clone().requires_grad_(True)
    cached = cached_from_dense(teacher, labels, 3, temperatures=(1.0, 2.0))
    assert torch.autograd.gradcheck(lambda x: pld_loss(x, teacher, labels, 2.0), (s,))
    assert torch.autograd.gradcheck(lambda x: pld_loss(x, cached, labels, 2.0), (s,))
    assert torch.autograd.gradcheck(
        lambda x: pld_loss(x, cached_from_dense(teacher, labels, 5), labels), (s,)
    )


@pytest.mark.parametrize("spread", [40.0, 150.0, 1500.0])  # fine; past float32; past float64
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_student_logit_spread(spread, dtype, caplog):
    student, teacher, labels = make_batch(3, 9, seed=11)
    student[:, ::2] -= spread
    student = student.to(dtype)
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    for targets, keep in (
        (teacher.to(dtype), None),
        (cached_from_dense(teacher, labels, 4), kept_positions(teacher, labels, 4)),
    ):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="pld_pipeline.losses.pld_kernel"):
            loss, grad = loss_and_grad(student, targets, labels)
        if keep is None:
            # Dense: the last suffix is the far class itself, so the batch is redone in
            # float64 past float32's range and in the log domain past float64's.
            redone = " ".join(r.getMessage() for r in caplog.records)
            want = {40.0: "", 150.0: "float32", 1500.0: "float32 float64"}[spread]
            if dtype == torch.float64:
                want = want.replace("float32", "").strip()
            assert [w for w in want.split() if w not in redone] == []
            assert len(caplog.records) == len(want.split())
        ref_loss, ref_grad = pld_reference(student, teacher, labels, 1.0, keep)
        assert rel_error(loss.item(), ref_loss) <= tol
        assert rel_error(grad, ref_grad) <= tol


def test_label_last_in_a_full_cache_with_a_far_tail():
    # K = C and the label is the teacher's last class: the list's last slot repeats the
    # label and weighs 0; the student's logits for the classes before it are far below.
    student, teacher, labels = make_batch(2, 6, seed=16, dtype=torch.float32)
    labels[:] = teacher.argmin(dim=1)
    order = [[c for c in sorted(range(6), key=lambda c: -float(teacher[b, c]))] for b in (0, 1)]
    for b in (0, 1):
        student[b, order[b][-3:-1]] -= 100.0  # exp() underflows in float32
    cached = cached_from_dense(teacher, labels, 6)
    loss, grad = loss_and_grad(student, cached, labels)
    ref_loss, ref_grad = pld_reference(student, teacher, labels)
    assert rel_error(loss.item(), ref_loss) <= 1e-4
    assert rel_error(grad, ref_grad) <= 1e-4


def test_dropped_weight():
    student, teacher, labels = make_batch(5, 10, seed=12)
    labels[0] = teacher[0].argmax()
    cached = cached_from_dense(teacher, labels, 3, temperatures=(1.0, 2.0))
    want = dropped_weight(teacher, labels, 3, 2.0)
    got = pld_dropped_weight(cached, labels, temperature=2.0)
    assert got.shape == (5,)
    assert rel_error(got, want) <= 1e-6
    assert pld_dropped_weight(teacher, labels).abs().max().item() == 0.0
    full = cached_from_dense(teacher, labels, 10)
    assert pld_dropped_weight(full, labels).abs().max().item() <= 1e-12

    fn = make_loss("pld", temperature=2.0)
    assert fn.last_dropped_weight is None
    fn(student, cached, labels)
    assert math.isclose(fn.last_dropped_weight, sum(want) / 5, rel_tol=1e-6)
    fn(student, teacher, labels)
    assert fn.last_dropped_weight is None


def test_temperature_not_cached_lists_cached_ones():
    student, teacher, labels = make_batch(2, 6, seed=13)
    cached = cached_from_dense(teacher, labels, 3, temperatures=(1.0, 2.0))
    with pytest.raises(TemperatureNotCachedError, match=r"3.*cached: 1, 2"):
        pld_loss(student, cached, labels, temperature=3.0)
    no_t1 = cached_from_dense(teacher, labels, 3, temperatures=(2.0,))
    with pytest.raises(TemperatureNotCachedError, match=r"T = 1.*cached: 2"):
        pld_loss(student, no_t1, labels, temperature=2.0)


def test_many_teacher_ties_in_a_long_row():
    # Long rows with three logit levels: an unstable sort would reorder tied classes.
    student, _, labels = make_batch(2, 300, seed=14)
    gen = torch.Generator().manual_seed(14)
    teacher = torch.randint(0, 3, (2, 300), generator=gen).double()
    assert_matches(student, teacher, labels, 1.0, teacher=teacher)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_label_first_order_matches_a_plain_sort(dtype):
    gen = torch.Generator().manual_seed(15)
    values = torch.tensor([-0.0, 0.0, -1.5, 1.5, 2.0, -2.0, 1e-45, -1e-45, 3e4, -3e4, 1.0])
    teacher = values[torch.randint(0, len(values), (6, 40), generator=gen)]
    teacher[0] = torch.randn(40, generator=gen)
    teacher = teacher.to(dtype)
    labels = torch.randint(0, 40, (6,), generator=gen)
    got = label_first_order(teacher, labels)
    for b in range(6):
        row = [float(v) for v in teacher[b].double()]
        assert got[b].tolist() == pld_ranking(row, int(labels[b]))
    two = label_first_order(torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=dtype), labels[:2] % 2)
    assert two.tolist() == [
        pld_ranking([1.0, 1.0], int(labels[0] % 2)),
        pld_ranking([0.0, 3.0], int(labels[1] % 2)),
    ]


@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("k", [1, 2])
def test_compact_two_classes_one_example(label, k):
    student = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, -0.5]], dtype=torch.float64)  # top-1 is class 0
    labels = torch.tensor([label])
    cached = cached_from_dense(teacher, labels, k, temperatures=(1.0, 2.0))
    # Every K here covers the whole ranking (K = C - 1 or C): compact equals dense.
    assert_matches(student, cached, labels, 2.0, teacher=teacher)
    assert_matches(student, teacher, labels, 2.0, teacher=teacher)
