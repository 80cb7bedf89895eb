"""Tail mass: the teacher probability at temperature T that a top-K record leaves out.

From a record's top-K log-probabilities at T = 1 and the cached logsumexps, the exact
probability of a cached class at T is ``exp((logp + lse(1)) / T - lse(T))``, so the mass
outside the top-K at T is ``1 - sum`` of those (REFERENCE.md: "What a top-K record keeps
of a real teacher"). It grows with T: a softer distribution puts more weight in the tail,
which every loss but PLD then sees only as an even spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Bins of the histogram that gives a p95 over a whole cache in bounded memory (0.0005 wide).
HISTOGRAM_BINS = 2000


def temperature_column(temperatures: Sequence[float], temperature: float) -> int | None:
    """Index of ``temperature`` among the cached ``temperatures`` (rel. tol. 1e-6), or None."""
    for j, cached in enumerate(temperatures):
        if math.isclose(float(cached), float(temperature), rel_tol=1e-6, abs_tol=1e-12):
            return j
    return None


def tail_mass(
    topk_logp: np.ndarray,
    lse: np.ndarray,
    temperatures: Sequence[float],
    temperature: float,
    k: int | None = None,
) -> np.ndarray:
    """Teacher probability at ``temperature`` outside the first ``k`` cached classes, per record.

    Args:
        topk_logp: [n, K] log-probabilities at T = 1, descending.
        lse: [n, nT] logsumexp(z / T) for each of ``temperatures``; must hold T = 1 and
            ``temperature``.
        temperatures: the cached temperatures of the ``lse`` columns.
        temperature: T > 0.
        k: keep the first k <= K classes (None: all K).

    Returns:
        [n] float64 in [0, 1].

    Raises:
        ValueError: T = 1 or ``temperature`` is not among ``temperatures``.
    """
    one, col = temperature_column(temperatures, 1.0), temperature_column(temperatures, temperature)
    if one is None or col is None:
        raise ValueError(
            f"tail mass at T={temperature:g} needs lse at T=1 and T={temperature:g}; cached: "
            f"{', '.join(f'{t:g}' for t in temperatures)}"
        )
    logp = np.asarray(topk_logp, dtype=np.float64)[:, :k]
    lse = np.asarray(lse, dtype=np.float64)
    log_p_t = (logp + lse[:, [one]]) / float(temperature) - lse[:, [col]]
    return np.clip(1.0 - np.exp(log_p_t).sum(axis=1), 0.0, 1.0)


class TailStats:
    """Mean and p95 of the tail mass at each temperature, over records added a slab at a time.

    The p95 comes from a histogram of HISTOGRAM_BINS bins over [0, 1] (its upper bin edge,
    so at most 0.0005 above the exact value): memory stays bounded for any cache size.
    """

    def __init__(self, temperatures: Sequence[float]) -> None:
        self.temperatures = tuple(float(t) for t in temperatures)
        self._sum = np.zeros(len(self.temperatures))
        self._count = 0
        self._hist = np.zeros((len(self.temperatures), HISTOGRAM_BINS), dtype=np.int64)

    def add(self, topk_logp: np.ndarray, lse: np.ndarray) -> list[np.ndarray]:
        """Count the records of one slab (rows to count only); returns their tail mass
        per temperature ([n] each)."""
        out = []
        for j, t in enumerate(self.temperatures):
            tail = tail_mass(topk_logp, lse, self.temperatures, t)
            self._sum[j] += tail.sum()
            self._hist[j] += np.histogram(tail, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
            out.append(tail)
        self._count += len(topk_logp)
        return out

    @property
    def count(self) -> int:
        """Records counted."""
        return self._count

    def summary(self) -> dict[float, dict[str, float]]:
        """T -> {"mean": ..., "p95": ...} over every record added (empty when none)."""
        if not self._count:
            return {}
        out = {}
        for j, t in enumerate(self.temperatures):
            cumulative = np.cumsum(self._hist[j])
            bin_ = int(np.searchsorted(cumulative, 0.95 * self._count))
            out[t] = {"mean": float(self._sum[j] / self._count), "p95": (bin_ + 1) / HISTOGRAM_BINS}
        return out


def tail_text(stats: dict[float, dict[str, float]]) -> str:
    """One line: "T=1 mean 0.350 p95 0.690; T=2 ..." (what logs and ``inspect`` print)."""
    return "; ".join(
        f"T={t:g} mean {s['mean']:.3f} p95 {s['p95']:.3f}" for t, s in sorted(stats.items())
    )
