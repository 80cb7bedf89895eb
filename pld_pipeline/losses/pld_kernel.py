"""PLD's hot path: suffix logsumexps over ranked student logits, with the analytic gradient.

Per example the ranking is: the label y (weight a_y); then a list of M classes idx in
teacher order (weights a), where a slot repeating the label is invalid (weight 0, skipped);
then the unranked classes, which sit in every denominator. The PLD loss (Bassam, Zhu, Bian
2025, Sec. 3: the Plackett-Luce negative log-likelihood of the teacher-optimal ranking,
weighted by the teacher's probabilities) is

    L = a_y (log(exp(s_y) + S_1) - s_y) + sum_k a_k (log S_k - s[idx_k]),
    S_k = sum_{l >= k, valid} exp(s[idx_l]) + U,

with U the sum of exp(s) over the unranked classes. Those are either none (the list and
the label cover every class), one "tail" class per row (a cache holding C - 1 classes: the
teacher's last one) or "rest": all classes outside the list and the label.

No logcumsumexp and no sort: the student logits are shifted by a per-row bound of their
max, exponentiated, and the suffix sums are a flip-cumsum-flip (never "total minus
prefix", which cancels catastrophically in the tail). The "rest" block enters through one
softmax over its classes: its mass U = exp(lse_u - shift) stays exact however small, and
the same softmax gives its gradient. With e = exp(s - shift) and
W_j = a_y / S_0 + sum_{k <= j} a_k / S_k (S_0 = e_y + S_1), the gradient is

    dL/ds_y = e_y a_y / S_0 - a_y,   dL/ds[idx_j] = e_j W_j - a_j,   dL/ds_i = e_i W_M (unranked),

which sums to 0 per row. The work is done in float32 (float64 for float64 logits). When a
row's last suffix sum (the smallest) comes near float32's underflow (the student's logits
for the last ranked classes some 64 or more below its top ones), the batch is redone in
float64, and past float64's range (never seen with real networks) in the log domain with
logcumsumexp and plain autograd. That choice reads one flag back to the host; inside a
training step on a GPU (`host_sync.no_host_sync`) nothing is read back, so the work is
done in float64 from the start, with the smallest suffix sums floored instead of the
log-domain fallback.
"""

from __future__ import annotations

import logging
import math

import torch

from .host_sync import host_sync_allowed

__all__ = ["ranked_pld", "UNRANKED_MODES"]

logger = logging.getLogger(__name__)

UNRANKED_MODES = ("none", "tail", "rest")
# Smallest last suffix sum (shifted) trusted in each dtype, far enough above the smallest
# normal number that the mass lost to underflow (under C * 1.2e-38 in float32) is
# negligible next to it: below 3e-6 relative for C = 21843.
_MIN_LAST_SUFFIX = {torch.float32: 1.0e-28, torch.float64: 1.0e-290}
# Floor for a suffix sum over invalid (weight 0) slots only, so that log() stays finite.
_TINY = {torch.float32: 1.0e-37, torch.float64: 1.0e-300}


def _rest_logsumexp(
    s: torch.Tensor, label: torch.Tensor, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax over the unranked classes [B, C], their logsumexp [B]); 0 and -inf if none."""
    s_unranked = s.scatter(1, idx, -math.inf).scatter_(1, label[:, None], -math.inf)
    # softmax copes with -inf fast (exp and logsumexp of -inf are slow on CPU); its row max
    # p_max = exp(max_u - lse_u) >= 1/C gives lse_u exactly.
    p_unranked = torch.softmax(s_unranked, dim=1)
    lse_u = s_unranked.amax(dim=1) - p_unranked.amax(dim=1).log()
    if idx.shape[1] + 1 >= s.shape[1]:
        # A row where every class is ranked: softmax of all -inf is NaN; U is 0.
        p_unranked = p_unranked.nan_to_num_(0.0)
        lse_u = lse_u.nan_to_num_(-math.inf)
    return p_unranked, lse_u


class _RankedPLD(torch.autograd.Function):
    """Mean PLD loss over the batch in one work dtype; returns (loss, spread_ok).

    When spread_ok is False the loss is a placeholder and must not be used.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        student: torch.Tensor,
        label: torch.Tensor,
        label_weight: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        invalid: torch.Tensor | None,
        unranked: str,
        tail: torch.Tensor | None,
        work: torch.dtype,
        on_device: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = student.to(work)
        batch = s.shape[0]
        x_label = s.gather(1, label[:, None])[:, 0]
        x = s.gather(1, idx)
        shift = torch.maximum(x.amax(dim=1), x_label)
        p_unranked = None
        if unranked == "rest":
            p_unranked, lse_u = _rest_logsumexp(s, label, idx)
            shift = torch.maximum(shift, lse_u)
        elif unranked == "tail":
            lse_u = s.gather(1, tail[:, None])[:, 0].masked_fill(tail == label, -math.inf)
            shift = torch.maximum(shift, lse_u)
        x = x.sub_(shift[:, None])
        x_label = x_label - shift
        e = x.exp()
        if invalid is not None:
            e = e.masked_fill_(invalid, 0.0)
        reverse = e.flip(1)  # a copy: U joins every suffix sum through its first column
        rest = None
        if unranked != "none":
            rest = (lse_u - shift).exp()  # U (0 where -inf)
            reverse[:, 0] += rest
        suffix = reverse.cumsum_(1).flip(1)
        # The smallest suffix sum, the last valid one, bounds the error of every term:
        # exp() of the logits that underflowed is below the smallest normal number, and
        # their sum must be negligible next to it. That also keeps every log finite. (An
        # invalid last slot with nothing after it holds 0 and weighs 0: it is floored.)
        last = suffix[:, -1]
        if invalid is not None:
            last.clamp_min_(_TINY[work])
            before = suffix[:, -2] if suffix.shape[1] > 1 else torch.ones_like(last)
            last = torch.where(invalid[:, -1], before, last)
        if on_device:
            # No read-back: the flag stays on the device and the smallest sums are floored
            # so every log and ratio stays finite (inexact only past the work dtype's range).
            flag = last.min() >= _MIN_LAST_SUFFIX[work]
            suffix = suffix.clamp_min_(_TINY[work])
        else:
            flag = torch.tensor(bool(last.min() >= _MIN_LAST_SUFFIX[work]))
        ctx.mark_non_differentiable(flag)
        if not on_device and not flag:
            return x.new_zeros(()), flag
        e_label = x_label.exp()
        suffix_0 = e_label + suffix[:, 0]
        flat_w = weight.reshape(-1)
        loss = torch.dot(flat_w, suffix.log().reshape(-1)) - torch.dot(flat_w, x.reshape(-1))
        loss = (loss + torch.dot(label_weight, suffix_0.log() - x_label)) / batch
        ctx.unranked = unranked
        ctx.out = (student.dtype, tuple(student.shape))
        ctx.save_for_backward(
            label, label_weight, idx, weight, e, suffix, e_label, suffix_0, p_unranked, rest, tail
        )
        return loss, flag

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad_loss: torch.Tensor,
        _grad_flag: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        out_dtype, shape = ctx.out
        (label, label_weight, idx, weight, e, suffix, e_label, suffix_0, p_unranked, rest, tail) = (
            ctx.saved_tensors
        )
        scale = grad_loss.to(e.dtype) / shape[0]
        w_label = label_weight / suffix_0
        ratio = weight / suffix
        ratio[:, 0] += w_label  # the label's a_y / S_0 joins every W_j
        cum_w = ratio.cumsum_(1)  # W_j
        # (e * W - a) * scale, leaving the saved tensors untouched.
        g_ranked = torch.addcmul(weight, e, cum_w, value=-1.0).mul_(-scale)
        g_label = (e_label * w_label - label_weight) * scale
        if ctx.unranked == "rest":
            # Unranked class i: e_i W_M = softmax_u(s)_i * U * W_M; softmax_u is 0 at
            # ranked classes. Add: an invalid slot repeats the label's index (gradient 0).
            grad = p_unranked * (rest * cum_w[:, -1] * scale)[:, None]
            grad.scatter_add_(1, idx, g_ranked)
        else:
            # The list, the tail and the label cover every class: plain writes suffice.
            grad = g_ranked.new_empty(shape).scatter_(1, idx, g_ranked)
            if ctx.unranked == "tail":
                g_tail = rest * cum_w[:, -1] * scale  # 0 where the tail is the label
                grad.scatter_(1, tail[:, None], g_tail[:, None])
        grad.scatter_(1, label[:, None], g_label[:, None])  # last: the label's value stays
        return grad.to(out_dtype), None, None, None, None, None, None, None, None, None


def _log_domain_pld(
    student: torch.Tensor,
    label: torch.Tensor,
    label_weight: torch.Tensor,
    idx: torch.Tensor,
    weight: torch.Tensor,
    invalid: torch.Tensor | None,
    unranked: str,
    tail: torch.Tensor | None,
) -> torch.Tensor:
    """Same loss via logcumsumexp and autograd in float64, exact for any spread (slow)."""
    s = student.double()
    weight, label_weight = weight.double(), label_weight.double()
    s_label = s.gather(1, label[:, None])[:, 0]
    s_ranked = s.gather(1, idx)
    masked = s_ranked if invalid is None else s_ranked.masked_fill(invalid, -math.inf)
    denom = torch.logcumsumexp(masked.flip(1), dim=1).flip(1)
    if unranked == "rest":
        s_unranked = s.scatter(1, idx, -math.inf).scatter(1, label[:, None], -math.inf)
        with torch.no_grad():
            empty = ~torch.isfinite(torch.logsumexp(s_unranked, dim=1))
        # Rows with no unranked class: take the logsumexp of zeros (finite, no NaN in the
        # backward) and then drop it.
        lse_u = torch.logsumexp(s_unranked.masked_fill(empty[:, None], 0.0), dim=1)
        denom = torch.logaddexp(denom, torch.where(empty, -math.inf, lse_u)[:, None])
    elif unranked == "tail":
        s_tail = s.gather(1, tail[:, None])
        denom = torch.where((tail != label)[:, None], torch.logaddexp(denom, s_tail), denom)
    terms = weight * (denom - s_ranked)
    if invalid is not None:
        terms = terms.masked_fill(invalid, 0.0)
    label_term = label_weight * (torch.logaddexp(s_label, denom[:, 0]) - s_label)
    return (terms.sum(dim=1) + label_term).mean()


def ranked_pld(
    student_logits: torch.Tensor,
    label: torch.Tensor,
    label_weight: torch.Tensor,
    idx: torch.Tensor,
    weight: torch.Tensor,
    invalid: torch.Tensor | None,
    unranked: str,
    tail: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch-mean PLD loss of the ranking (label, idx..., unranked); see the module docstring.

    Args:
        student_logits: [B, C] any float dtype (worked in float32, float64 for float64).
        label: [B] int64, ranked first.
        label_weight: [B] its teacher weight a_y.
        idx: [B, M] int64 classes ranked after the label, teacher order.
        weight: [B, M] their teacher weights, 0 on invalid slots.
        invalid: [B, M] bool, True where a slot repeats the label; None if none does.
        unranked: "none" (label and idx cover every class), "tail" (one more class per
            row, `tail`, ranked last; ignored where it is the label) or "rest" (every class
            outside label and idx).
        tail: [B] int64, for unranked == "tail".

    Returns:
        Scalar loss, float32 (float64 for float64 logits); differentiable w.r.t. the logits.
    """
    if unranked not in UNRANKED_MODES or (unranked == "tail") != (tail is not None):
        raise ValueError(f"unranked must be one of {UNRANKED_MODES} (tail given for 'tail')")
    work = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    if not host_sync_allowed() and student_logits.device.type != "cpu":
        # Inside a training step on a GPU: no read-back to choose the precision, so the
        # wider one is used from the start (a [B, K] problem plus one softmax over C).
        loss, _ = _RankedPLD.apply(
            student_logits, label, label_weight.double(), idx, weight.double(), invalid,
            unranked, tail, torch.float64, True,
        )  # fmt: skip
        return loss.to(work)
    for dtype in (work, torch.float64) if work != torch.float64 else (work,):
        loss, spread_ok = _RankedPLD.apply(
            student_logits,
            label,
            label_weight.to(dtype),
            idx,
            weight.to(dtype),
            invalid,
            unranked,
            tail,
            dtype,
        )
        if bool(spread_ok):
            return loss.to(work)
        logger.debug("PLD suffix sums underflow %s: redone wider", dtype)
    return _log_domain_pld(
        student_logits, label, label_weight, idx, weight, invalid, unranked, tail
    ).to(work)
