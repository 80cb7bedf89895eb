"""Slow, plain float64 references for the loss tests: loops, sorts and Python floats.

Nothing here calls pld_pipeline: each formula is written out from the papers (PLD: Bassam
et al. 2025; KD: Hinton et al. 2015; DIST: Huang et al. 2022; DKD: Zhao et al. 2022) so the
tests compare the library against an independent reading. PLD has its gradient written
out too (REFERENCE.md's formula); the baselines are built from torch float64 scalars in
loops so autograd gives their exact gradient.
"""

from __future__ import annotations

import math

import torch

from pld_pipeline.losses import CachedTargets


def rows(x: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in x.detach().double().cpu()]


def logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def softmax(values: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in values]
    lse = logsumexp(scaled)
    return [math.exp(v - lse) for v in scaled]


def teacher_order(t_row: list[float]) -> list[int]:
    """Classes by descending teacher logit; ties go to the lower class index."""
    return sorted(range(len(t_row)), key=lambda c: (-t_row[c], c))


def pld_ranking(t_row: list[float], label: int) -> list[int]:
    """pi*: the label first, then the other classes by descending teacher logit."""
    return [label] + [c for c in teacher_order(t_row) if c != label]


def pld_row(s_row, t_row, label, temperature, keep=None):
    """PLD loss and gradient of one example, keeping the first `keep` positions' terms.

    Denominators always run over every later position (truncation drops terms only).
    """
    rank = pld_ranking(t_row, label)
    prob = softmax(t_row, temperature)
    weight = [prob[c] for c in rank]
    keep = len(rank) if keep is None else keep
    loss = 0.0
    grad = [0.0] * len(s_row)
    for k in range(keep):
        tail = rank[k:]
        denom = logsumexp([s_row[c] for c in tail])
        loss += weight[k] * (denom - s_row[rank[k]])
        # d/ds_i of log sum_{l >= k} exp(s_l): the softmax over the positions >= k.
        for c in tail:
            grad[c] += weight[k] * math.exp(s_row[c] - denom)
        grad[rank[k]] -= weight[k]
    return loss, grad


def pld_reference(student, teacher, labels, temperature=1.0, keep=None):
    """Batch-mean PLD loss and gradient [B][C]; keep: None or one int per row."""
    s, t = rows(student), rows(teacher)
    batch = len(s)
    total, grads = 0.0, []
    for b in range(batch):
        loss, grad = pld_row(
            s[b], t[b], int(labels[b]), temperature, None if keep is None else keep[b]
        )
        total += loss
        grads.append([g / batch for g in grad])
    return total / batch, grads


def cached_from_dense(teacher, labels, k, temperatures=(1.0,), logp_dtype=torch.float64):
    """Compact targets of dense teacher logits, built with plain sorts and loops."""
    t = rows(teacher)
    idx, logp, lse, gt = [], [], [], []
    for b, row in enumerate(t):
        order = teacher_order(row)[:k]
        lse1 = logsumexp(row)
        idx.append(order)
        logp.append([row[c] - lse1 for c in order])
        lse.append([logsumexp([v / temp for v in row]) for temp in temperatures])
        gt.append(row[int(labels[b])])
    return CachedTargets(
        topk_idx=torch.tensor(idx, dtype=torch.int64),
        topk_logp=torch.tensor(logp, dtype=torch.float64).to(logp_dtype),
        lse=torch.tensor(lse, dtype=torch.float64),
        temperatures=tuple(temperatures),
        gt_logit=torch.tensor(gt, dtype=torch.float64),
    )


def kept_positions(teacher, labels, k):
    """Ranked positions a top-k cache covers per row: k + 1, or k if the label is in it."""
    out = []
    for b, row in enumerate(rows(teacher)):
        out.append(k if int(labels[b]) in teacher_order(row)[:k] else k + 1)
    return out


def dropped_weight(teacher, labels, k, temperature):
    """Teacher weight outside the label and the top-k, per row."""
    out = []
    for b, row in enumerate(rows(teacher)):
        prob = softmax(row, temperature)
        kept = set(teacher_order(row)[:k]) | {int(labels[b])}
        out.append(1.0 - sum(prob[c] for c in kept))
    return out


def teacher_probs(teacher, labels, temperature, k=None):
    """Teacher distribution at T per row; with k, the cache's view: exact probabilities
    for the label and the top-k, the rest of the mass spread evenly over the others."""
    out = []
    for b, row in enumerate(rows(teacher)):
        prob = softmax(row, temperature)
        if k is not None:
            kept = set(teacher_order(row)[:k]) | {int(labels[b])}
            others = [c for c in range(len(row)) if c not in kept]
            left = max(0.0, 1.0 - sum(prob[c] for c in kept))
            prob = [prob[c] if c in kept else left / len(others) for c in range(len(row))]
        out.append(prob)
    return out


# Baselines, as functions of a float64 student tensor (autograd through scalar loops).


def _softmax_t(row, temperature):
    scaled = [v / temperature for v in row]
    m = max(float(v.detach()) if isinstance(v, torch.Tensor) else v for v in scaled)
    exps = [torch.exp(v - m) for v in scaled]
    total = sum(exps)
    return [e / total for e in exps], [v - m - torch.log(total) for v in scaled]


def ce_reference(student, labels, label_smoothing=0.0):
    batch, classes = student.shape
    total = 0.0
    for b in range(batch):
        _, logq = _softmax_t(list(student[b]), 1.0)
        y = int(labels[b])
        for c in range(classes):
            target = (1 - label_smoothing) * (c == y) + label_smoothing / classes
            total = total - target * logq[c]
    return total / batch


def kd_reference(student, probs, labels, temperature, ce_weight):
    batch, classes = student.shape
    kl = 0.0
    for b in range(batch):
        _, logq = _softmax_t(list(student[b]), temperature)
        for c in range(classes):
            p = probs[b][c]
            if p > 0:
                kl = kl + p * (math.log(p) - logq[c])
    kd = temperature**2 * kl / batch
    return ce_weight * ce_reference(student, labels) + (1 - ce_weight) * kd


def _pearson(x, y, eps=1e-8):
    """Pearson correlation of student values x (tensors) and teacher values y (floats),
    with +eps in the denominator as in the DIST authors' code."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    dx, dy = [v - mx for v in x], [v - my for v in y]
    cov = sum(a * b for a, b in zip(dx, dy, strict=True))
    ss = sum(a * a for a in dx)
    # |dx| at 0 has no derivative; take 0 there, as torch's norm does.
    nx = torch.sqrt(ss) if float(ss.detach()) > 0 else ss * 0.0
    ny = math.sqrt(sum(b * b for b in dy))
    return cov / (nx * ny + eps)


def dist_reference(student, probs, labels, temperature, beta, gamma, ce_weight):
    batch, classes = student.shape
    p_s = [_softmax_t(list(student[b]), temperature)[0] for b in range(batch)]
    inter = 1 - sum(_pearson(p_s[b], probs[b]) for b in range(batch)) / batch
    cols_s = [[p_s[b][c] for b in range(batch)] for c in range(classes)]
    cols_t = [[probs[b][c] for b in range(batch)] for c in range(classes)]
    intra = 1 - sum(_pearson(cols_s[c], cols_t[c]) for c in range(classes)) / classes
    loss = temperature**2 * (beta * inter + gamma * intra)
    return loss + ce_weight * ce_reference(student, labels)


def dkd_reference(student, probs, labels, temperature, alpha, beta, ce_weight):
    batch, classes = student.shape
    tckd = nckd = 0.0
    for b in range(batch):
        y = int(labels[b])
        q, _ = _softmax_t(list(student[b]), temperature)
        p = probs[b]
        q_rest = sum(q[c] for c in range(classes) if c != y)
        p_rest = sum(p[c] for c in range(classes) if c != y)
        tckd = tckd + p[y] * (math.log(p[y]) - torch.log(q[y]))
        if p_rest > 0:
            tckd = tckd + p_rest * (math.log(p_rest) - torch.log(q_rest))
        # Non-target: softmax over the other classes only.
        others = [c for c in range(classes) if c != y]
        _, logq_nt = _softmax_t([student[b][c] for c in others], temperature)
        for j, c in enumerate(others):
            pn = p[c] / p_rest
            if pn > 0:
                nckd = nckd + pn * (math.log(pn) - logq_nt[j])
    loss = temperature**2 * (alpha * tckd + beta * nckd) / batch
    return loss + ce_weight * ce_reference(student, labels)


def value_and_grad(fn, student):
    """(loss, gradient [B, C]) of a reference built from float64 scalar loops."""
    s = student.detach().double().clone().requires_grad_(True)
    loss = fn(s)
    (grad,) = torch.autograd.grad(loss, s)
    return float(loss.detach()), grad


def rel_error(got, want) -> float:
    """max |got - want| / max |want| (norm-wise relative error)."""
    got = torch.as_tensor(got, dtype=torch.float64)
    want = torch.as_tensor(want, dtype=torch.float64)
    scale = want.abs().max().clamp_min(1e-300)
    return float((got - want).abs().max() / scale)
