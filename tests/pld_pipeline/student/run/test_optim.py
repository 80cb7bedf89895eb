"""Optimizers and the warmup-cosine schedule against plain float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pld_pipeline.configs.train import OptimConfig
from pld_pipeline.student.run.optim import Lamb, make_optimizer, make_scheduler, param_groups


def lamb_reference(w0, grads, lr, betas, eps, wd):
    """LAMB (You et al. 2020, Alg. 2) with plain Python floats over flat lists."""
    b1, b2 = betas
    w = [float(x) for x in w0]
    m = [0.0] * len(w)
    v = [0.0] * len(w)
    for t, g in enumerate(grads, start=1):
        upd = []
        for j, gj in enumerate(g):
            m[j] = b1 * m[j] + (1 - b1) * gj
            v[j] = b2 * v[j] + (1 - b2) * gj * gj
            mh, vh = m[j] / (1 - b1**t), v[j] / (1 - b2**t)
            upd.append(mh / (math.sqrt(vh) + eps) + wd * w[j])
        wn = math.sqrt(sum(x * x for x in w))
        un = math.sqrt(sum(x * x for x in upd))
        ratio = wn / un if wn > 0 and un > 0 else 1.0
        w = [wj - lr * ratio * uj for wj, uj in zip(w, upd, strict=True)]
    return w


def test_lamb_matches_reference():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(7, generator=g, dtype=torch.float64)
    grads = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(4)]
    p = nn.Parameter(w0.clone())
    opt = Lamb([p], lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05)
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    ref = lamb_reference(w0.tolist(), [x.tolist() for x in grads], 0.01, (0.9, 0.99), 1e-6, 0.05)
    torch.testing.assert_close(
        p.detach(), torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12
    )


def test_lamb_zero_weights_use_ratio_one():
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = Lamb([p], lr=0.1, eps=0.0)
    p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt.step()
    # m_hat = g, v_hat = g^2 after one step: update = sign(g)
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, -0.1], dtype=torch.float64))


def test_param_groups_skip_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    decay, no_decay = param_groups(model, 0.1, decay_all=False)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3
    assert no_decay["weight_decay"] == 0.0
    [everything] = param_groups(model, 0.1, decay_all=True)
    assert len(everything["params"]) == 4


@pytest.mark.parametrize(
    ("name", "cls"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lamb", Lamb)]
)
def test_make_optimizer_by_name(name, cls):
    opt = make_optimizer(nn.Linear(2, 2), OptimConfig(name=name, lr=0.5, weight_decay=0.01))
    assert isinstance(opt, cls)
    assert opt.param_groups[0]["lr"] == 0.5
    assert opt.param_groups[0]["weight_decay"] == 0.01
    assert opt.param_groups[1]["weight_decay"] == 0.0


def test_sgd_nesterov_momentum_passed():
    opt = make_optimizer(
        nn.Linear(2, 2), OptimConfig(name="sgd", lr=0.1, momentum=0.8, nesterov=True)
    )
    assert opt.defaults["momentum"] == 0.8
    assert opt.defaults["nesterov"] is True


def test_warmup_then_cosine_per_step():
    lr, min_lr, epochs, spe, warm = 1.0, 0.1, 4, 5, 1
    cfg = OptimConfig(name="sgd", lr=lr, min_lr=min_lr, warmup_epochs=warm)
    opt = make_optimizer(nn.Linear(1, 1), cfg)
    sched = make_scheduler(opt, cfg, epochs, spe)
    seen = []
    for _ in range(epochs * spe):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    total, w = epochs * spe, warm * spe
    expected = [
        (s + 1) / w * lr
        if s < w
        else min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (s - w) / (total - w)))
        for s in range(total)
    ]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[w] == pytest.approx(lr)
    assert opt.param_groups[0]["lr"] == pytest.approx(min_lr)


def test_scheduler_state_round_trips():
    cfg = OptimConfig(name="sgd", lr=0.3, warmup_epochs=0.5)
    opt = make_optimizer(nn.Linear(1, 1), cfg)
    sched = make_scheduler(opt, cfg, 3, 4)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = make_optimizer(nn.Linear(1, 1), cfg)
    sched2 = make_scheduler(opt2, cfg, 3, 4)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
