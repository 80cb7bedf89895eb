"""8-bit top-K log-probabilities (record precision ``q8``): quantize on write, dequantize on read.

A record's K log-probabilities at T = 1, sorted descending, are stored as

- ``topk_logp1`` [n] float16: the top-1 log-probability, the very value an fp16 cache stores;
- a step exponent e [n] int8: the record's step is s = 2**(e / m), m steps per octave;
- ``topk_code`` [n, K] uint8: code increments, the top-1's (column 0) being 0;

and read back as ``logp = topk_logp1 - (s * cumsum(topk_code, axis=1))**2``: the code of
class j counts steps of the square root of its gap below the top-1 (storage/q8_layout.py
says which of these arrays each schema version stores, and how). Square roots give
fine steps near the top-1, where classes carry weight, and coarse ones far below it, where
they carry almost none: an error of d nats on a class of probability p costs about
p d**2 / 2 nats of KL, and a gap g is held to within 2 s sqrt(g). s is the smallest
2**(e / m) with sqrt(top-1 - K-th) / s <= 255, so every record spends the 256 codes on its
own range: with m = 1 (schema version 2) a record uses 128 to 255 of them, with m = 2
(version 3) 181 to 255, which cuts the error by about a quarter for a few tenths of a
byte. The codes never decrease along a record (the K classes keep their order) and the
top-1 is exact (code 0).

Each class's code is its root gap divided by s rounded down or up: of the two, the one
with the smaller second-order KL of the record so far, p d**2 / 2 for the class's own log
error d plus E**2 / (2 t) for the error E it leaves in the kept mass (the running sum of
stored minus true probabilities, error feedback; t is the record's true tail mass). The
kept mass, and the tail 1 - sum, so stay near exact where the tail is small and a wrong
tail costs most; rounding each class to the nearest alone lets errors add up past a
small tail. Where the losses take a slot's weight from elsewhere (``exact``, version 2's
true class, read from ``gt_logp``) it is rounded to the nearest and left out of E.

The logsumexps and the true class's logit are stored relative to lse(T = 1), in float16:
``lse_gap`` [n, nT] = lse(T) - lse(1) / T (in [0, (1 - 1/T) log C]; 0 at T = 1) and
``gt_logp`` [n] = gt_logit - lse(1). Every probability at every cached T depends on these
alone (p_T = exp((logp + lse(1)) / T - lse(T)) = exp(logp / T - lse_gap)); a q8 record
drops the teacher's absolute logit scale, which no loss uses: it reads as lse(1) = 0.
"""

from __future__ import annotations

import numpy as np

CODE_MAX = 255
MIN_LOG2_STEP = -24  # a record whose K classes tie: any step holds it
MIN_TAIL = 1e-6


def _step_exponent(spread: np.ndarray, steps_per_octave: int) -> np.ndarray:
    """e per row [n] int8: the smallest 2**(e / m) >= sqrt(spread) / 255 (>= 2**-24)."""
    m = steps_per_octave
    with np.errstate(divide="ignore"):
        e = np.ceil(m * np.log2(np.sqrt(np.maximum(spread, 0.0)) / CODE_MAX))
    low = MIN_LOG2_STEP * m
    return np.clip(np.nan_to_num(e, neginf=low), low, 127).astype(np.int8)


def step_size(exponent: np.ndarray, steps_per_octave: int, dtype: type = np.float64) -> np.ndarray:
    """The step 2**(e / m) of each record [n], in ``dtype`` (what writer and readers use)."""
    return np.exp2(exponent.astype(dtype) / dtype(steps_per_octave)).astype(dtype)


def quantize_logp(
    logp: np.ndarray, exact: np.ndarray | None = None, steps_per_octave: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize top-K log-probabilities (descending) to the q8 arrays.

    Args:
        logp: [n, K] float log-probabilities, each row sorted descending (small rounding
            disorder is tolerated: gaps are made non-decreasing first).
        exact: [n, K] bool, slots whose value readers take from elsewhere (the true class:
            the losses use ``gt_logit``); their rounding is left out of the running sum.
        steps_per_octave: m, the step is 2**(e / m) (1 in schema version 2, 2 since 3).

    Returns:
        (topk_logp1 [n] float16, step exponent e [n] int8, topk_code [n, K] uint8).
    """
    logp = np.asarray(logp, dtype=np.float64)
    n = logp.shape[0]
    top1 = logp[:, 0].astype(np.float16)
    gap = np.maximum.accumulate(np.maximum(top1.astype(np.float64)[:, None] - logp, 0.0), axis=1)
    e = _step_exponent(gap[:, -1], steps_per_octave)
    step = step_size(e, steps_per_octave)
    x = np.minimum(np.sqrt(gap) / step[:, None], CODE_MAX)
    p1 = np.exp(top1.astype(np.float64))
    # The record's true tail mass at T = 1, what an error in the kept mass is measured
    # against (floored: a record holding all the mass only has to keep the sum exact).
    tail = np.maximum(1.0 - np.exp(logp).sum(axis=1), MIN_TAIL)
    cumulative = np.zeros(gap.shape, np.int16)
    error = np.zeros(n)  # running sum of (stored - true) probabilities
    for j in range(1, gap.shape[1]):
        previous = cumulative[:, j - 1]
        low = np.maximum(np.floor(x[:, j]), previous)
        high = np.maximum(np.minimum(np.ceil(x[:, j]), CODE_MAX), previous)
        true = p1 * np.exp(-gap[:, j])
        cost, fed = [], []
        for code_j in (low, high):
            stored_gap = np.square(code_j * step)
            d_prob = p1 * np.exp(-stored_gap) - true
            # Second-order KL of the record: this class's log error, and the tail's.
            kl = true * np.square(stored_gap - gap[:, j]) / 2 + np.square(error + d_prob) / (
                2 * tail
            )
            cost.append(kl)
            fed.append(d_prob)
        pick_high = cost[1] < cost[0]
        if exact is not None:  # nearest rounding, nothing fed back
            nearest = np.abs(fed[1]) < np.abs(fed[0])
            pick_high = np.where(exact[:, j], nearest, pick_high)
        cumulative[:, j] = np.where(pick_high, high, low)
        chosen = np.where(pick_high, fed[1], fed[0])
        error += chosen if exact is None else np.where(exact[:, j], 0.0, chosen)
    code = np.diff(cumulative, axis=1, prepend=np.zeros((n, 1), np.int16))
    return top1, e, code.astype(np.uint8)


def dequantize_logp(
    logp1: np.ndarray, exponent: np.ndarray, code: np.ndarray, steps_per_octave: int = 2
) -> np.ndarray:
    """The q8 arrays back to log-probabilities [n, K] float32 (see the module docstring).

    Args:
        logp1: [n] float16 top-1 log-probabilities.
        exponent: [n] int8 step exponents e (the step is 2**(e / steps_per_octave)).
        code: [n, K] uint8 code increments; column 0, the top-1's, is read as 0 (schema
            version 3 keeps the record's step exponent there).
        steps_per_octave: m (1 in schema version 2, 2 since 3).
    """
    # One contiguous [n, K] pass per step (cheaper than strided writes): the running codes
    # in uint8 (the writer keeps them <= 255, so nothing is cast), then roots -> gaps ->
    # log-probs in place.
    codes = np.array(code, dtype=np.uint8, order="C")
    codes[:, :1] = 0
    out = np.cumsum(codes, axis=1, dtype=np.uint8).astype(np.float32)
    out *= step_size(exponent, steps_per_octave, np.float32)[:, None]
    np.square(out, out=out)
    np.subtract(logp1.astype(np.float32)[:, None], out, out=out)
    return out


def max_error(logp: np.ndarray, steps_per_octave: int = 2) -> np.ndarray:
    """The largest |dequantized - given| a q8 record of these log-probabilities can hold,
    per entry [n, K]: a gap g is within one root step, |(sqrt(g) +- s)**2 - g| <= 2 s
    sqrt(g) + s**2; the top-1 within float16's rounding (which an fp16 record holds too).
    Gaps are measured from the float16 top-1, so every other entry can also be off by that
    rounding (a near-tie of rank 2 rounded above the stored top-1 is read as equal to it)."""
    logp = np.asarray(logp, dtype=np.float64)
    top1 = logp[:, 0].astype(np.float16).astype(np.float64)
    gap = np.maximum(top1[:, None] - logp, 0.0)
    step = step_size(_step_exponent(gap[:, -1], steps_per_octave), steps_per_octave)[:, None]
    top1_rounding = np.abs(logp[:, :1] - top1[:, None])
    bound = 2 * step * np.sqrt(gap) + step**2 + top1_rounding
    bound[:, 0] = np.abs(logp[:, 0]) * 2.0**-11
    return bound * (1 + 1e-6) + 1e-6


def relative_lse(lse: np.ndarray, temperatures: tuple[float, ...]) -> np.ndarray:
    """``lse_gap`` [n, nT] float16: lse(T) - lse(1) / T, from absolute logsumexps [n, nT]."""
    lse = np.asarray(lse, dtype=np.float64)
    one = lse[:, [list(temperatures).index(1.0)]]
    return (lse - one / np.asarray(temperatures, dtype=np.float64)[None, :]).astype(np.float16)
