"""8-bit top-K log-probabilities (record precision ``q8``): quantize on write, dequantize on read.

A record's K log-probabilities at T = 1, sorted descending, are stored as

- ``topk_logp1`` [n] float16: the top-1 log-probability, the very value an fp16 cache stores;
- ``topk_step`` [n] float16: nats per code step, (top-1 - K-th) / 255 rounded up to float16;
- ``topk_code`` [n, K] uint8: code increments, ``topk_code[:, 0] == 0``;

and read back as ``logp = topk_logp1 - topk_step * cumsum(topk_code, axis=1)``. The
cumulative code of class j is its gap below the top-1 divided by the step, rounded to
the nearest integer: rounding is monotone, so the codes never decrease along a record
and the K classes keep their order; the top-1 is exact (code 0); every other value is
within half a step (the last within one, where float16 rounds the step up). A per-record
step spends the 256 codes on the record's own range, so a flat record (small gaps, where
each class carries weight) gets a fine step and a peaked one (large gaps, tiny weights
past the top) a coarse one. Increments rather than cumulative codes are stored because
they are small numbers whose high bits are zero, which bit-shuffle compresses away.
"""

from __future__ import annotations

import numpy as np

CODE_MAX = 255


def quantize_logp(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize top-K log-probabilities (descending) to the q8 arrays.

    Args:
        logp: [n, K] float log-probabilities, each row sorted descending (small rounding
            disorder is tolerated: gaps are made non-decreasing first).

    Returns:
        (topk_logp1 [n] float16, topk_step [n] float16, topk_code [n, K] uint8).
    """
    logp = np.asarray(logp, dtype=np.float64)
    n, k = logp.shape
    top1 = logp[:, 0].astype(np.float16)
    gap = np.maximum.accumulate(np.maximum(top1.astype(np.float64)[:, None] - logp, 0.0), axis=1)
    last = gap[:, -1]
    step = (last / CODE_MAX).astype(np.float16)
    short = step.astype(np.float64) * CODE_MAX < last  # float16 rounded it down: one ulp up
    step[short] = np.nextafter(step[short], np.float16(np.inf))
    scale = step.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cumulative = np.where(scale[:, None] > 0, np.rint(gap / scale[:, None]), 0.0)
    cumulative = np.clip(cumulative, 0, CODE_MAX).astype(np.int16)
    cumulative[:, 0] = 0
    code = np.diff(cumulative, axis=1, prepend=np.zeros((n, 1), np.int16))
    return top1, step, code.astype(np.uint8)


def dequantize_logp(logp1: np.ndarray, step: np.ndarray, code: np.ndarray) -> np.ndarray:
    """The q8 arrays back to log-probabilities [n, K] float32 (see the module docstring)."""
    cumulative = np.cumsum(code, axis=1, dtype=np.int32).astype(np.float32)
    return logp1.astype(np.float32)[:, None] - step.astype(np.float32)[:, None] * cumulative


def max_error(logp: np.ndarray) -> np.ndarray:
    """The largest |dequantized - given| a q8 record of these log-probabilities can hold,
    per row [n]: one step (the step is at most (top-1 - K-th) / 255, plus float16
    rounding of the step and of the top-1)."""
    logp = np.asarray(logp, dtype=np.float64)
    top = np.abs(logp[:, 0])
    return (logp[:, 0] - logp[:, -1]) / CODE_MAX * 1.002 + top * 2.0**-11
