"""Before a run pays for it: what its cache's top-K targets cost its loss.

A top-K record leaves out the teacher's mass outside the top K, and at a higher T more of
it (REFERENCE.md, "What a top-K record keeps of a real teacher"). KD, DIST and DKD see that
mass spread evenly; PLD drops it. `bench/fidelity.py` measured, on a real ImageNet teacher,
how far each loss's gradient then is from the dense teacher's, per K and T; that table
ships next to this module (`gradient_bands.json`). A run logs the tail mass of its own
cache at its loss's T and K', and the band the table gives for its loss, K' and T; above
BAND_LIMIT it warns in one line and names the fixes. A sweep warns once per such grid
point (its runs, in the same process, then stay quiet about it).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.tail import tail_mass

logger = logging.getLogger(__name__)

BANDS_FILE = Path(__file__).with_name("gradient_bands.json")
BAND_LIMIT = 0.10
BAND_EDGES = (0.01, 0.05, 0.10)
DOC = "docs/choosing-k-t-precision.md"
_warned: set[tuple] = set()
_warned_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def load_bands(path: str = str(BANDS_FILE)) -> dict[str, Any]:
    """The measured table: {"errors": loss -> "T" -> "K" -> mean relative gradient error,
    "tail_mass": "T" -> "K" -> mean tail mass, "source": how it was measured}. A missing
    file (an install without package data) gives an empty table: runs then log the tail
    mass without a band, and never fail for it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        logger.debug("no gradient-band table at %s", path)
        return {"errors": {}, "tail_mass": {}, "source": {"classes": 0}}


def band_name(error: float) -> str:
    """ "< 1 %", "1-5 %", "5-10 %" or "> 10 %" (0 is "exact")."""
    if error == 0.0:
        return "exact"
    low = 0.0
    for edge in BAND_EDGES:
        if error <= edge:
            return f"< {edge:.0%}" if low == 0.0 else f"{low:.0%}-{edge:.0%}"
        low = edge
    return f"> {BAND_EDGES[-1]:.0%}"


@dataclass(frozen=True)
class Lookup:
    """The table entry used for a (loss, T, K): its error, and which measured T and K."""

    error: float
    table_t: float
    table_k: int
    how: str  # "K" (same number of classes as the table) or "tail" (nearest tail mass)


def _nearest_t(measured: Sequence[float], temperature: float) -> float:
    """The measured T to read: T itself, else the next measured one above it (errors grow
    with T), else the largest."""
    above = [t for t in measured if t >= temperature - 1e-9]
    return min(above) if above else max(measured)


def lookup(
    loss: str, temperature: float, k: int, num_classes: int, tail: float | None = None
) -> Lookup | None:
    """The measured gradient error for `loss` at `temperature` from top-`k` targets.

    With the table's number of classes, the entry of the largest measured K <= k (errors
    fall with K: an upper bound). Otherwise (another class count: K means something else)
    the entry at that T whose measured tail mass is nearest this cache's `tail`.

    Returns:
        None when the table has no such loss or no entry applies.
    """
    table = load_bands()
    by_t = table["errors"].get(loss)
    if not by_t:
        return None
    t = _nearest_t([float(x) for x in by_t], temperature)
    errors = {int(kk): e for kk, e in by_t[f"{t:g}"].items()}
    if num_classes == int(table["source"]["classes"]):
        fitting = [kk for kk in errors if kk <= k]
        if not fitting:
            return None
        best = max(fitting)
        return Lookup(float(errors[best]), t, best, "K")
    if tail is None:
        return None
    tails = {int(kk): m for kk, m in table["tail_mass"][f"{t:g}"].items()}
    best = min(tails, key=lambda kk: abs(tails[kk] - tail))
    return Lookup(float(errors[best]), t, best, "tail")


def smallest_k_within(loss: str, temperature: float, limit: float = BAND_LIMIT) -> int | None:
    """The smallest measured K whose error at (the measured T for) `temperature` is within
    `limit`, or None."""
    by_t = load_bands()["errors"].get(loss) or {}
    if not by_t:
        return None
    t = _nearest_t([float(x) for x in by_t], temperature)
    ok = [int(kk) for kk, e in by_t[f"{t:g}"].items() if e <= limit]
    return min(ok) if ok else None


@dataclass(frozen=True)
class TargetFidelity:
    """What a run's targets keep of its teacher, and the line the run logs about it."""

    loss: str
    temperature: float
    k: int
    num_classes: int
    tail_mass: float | None  # mean over the records read, at T and K'
    found: Lookup | None

    @property
    def exact(self) -> bool:
        """Dense targets, or a cache that leaves at most one class out (nothing to guess)."""
        return self.k >= self.num_classes - 1

    @property
    def warn(self) -> bool:
        return not self.exact and self.found is not None and self.found.error > BAND_LIMIT

    def message(self) -> str:
        what = f"{self.loss} at T={self.temperature:g} from top-{self.k} targets (C={self.num_classes})"
        if self.exact:
            return f"{what}: exact, the cache holds every class the loss needs"
        tail = (
            f"the cache's teacher leaves {self.tail_mass:.3f} of its mass at T="
            f"{self.temperature:g} outside the top-{self.k}"
            if self.tail_mass is not None
            else "tail mass unknown"
        )
        if self.found is None:
            return f"{what}: {tail}; no measured gradient error for this loss and K ({DOC})"
        f = self.found
        basis = (
            f"measured at T={f.table_t:g}, K={f.table_k}"
            if f.how == "K"
            else f"measured at T={f.table_t:g} for the K (={f.table_k} of 1000) with the nearest tail mass"
        )
        band = band_name(f.error)
        if not self.warn:
            return f"{what}: {tail}; gradient within {band} of the dense teacher's ({basis}, {DOC})"
        return (
            f"{what}: gradient {f.error:.0%} off the dense teacher's ({band}; {basis}); {tail}. "
            f"Fix: {self.fixes()} ({DOC})"
        )

    def fixes(self) -> str:
        """The fixes, with the table's figures where it has them."""
        lower = [
            t
            for t in sorted(float(x) for x in load_bands()["errors"].get(self.loss, {}))
            if t < self.temperature and (smallest_k_within(self.loss, t) or 10**9) <= max(self.k, 1)
        ]
        t_text = f"a lower T (T={lower[-1]:g} is within 10 % at this K)" if lower else "a lower T"
        k_needed = smallest_k_within(self.loss, self.temperature)
        k_text = f"a larger K (K >= {k_needed} at this T)" if k_needed else "a larger K"
        return f"{t_text}, {k_text}, or a full cache (format: full, target_form: dense)"


def loss_temperature(loss_name: str, loss_config: Any) -> float | None:
    """The run's loss temperature: the configured one, else the loss's default (None: ce)."""
    from pld_pipeline.losses import make_loss  # noqa: PLC0415 - torch only when asked

    if loss_config.temperature is not None:
        return float(loss_config.temperature)
    value = make_loss(loss_name, **loss_config.params).params.get("temperature")
    return None if value is None else float(value)


TAIL_SAMPLE = 65536  # records (evenly spaced) a run's tail-mass line is the mean of


def assess(
    loss_name: str,
    temperature: float | None,
    k: int,
    num_classes: int,
    slab: Any = None,
) -> TargetFidelity | None:
    """The fidelity of `loss_name` at `temperature` from top-`k` targets (None for ce or
    no temperature); the tail mass is the mean over the decodable records of `slab` (at
    most `TAIL_SAMPLE` of them, evenly spaced)."""
    if loss_name == "ce" or temperature is None:
        return None
    tail = None
    if slab is not None and slab.topk_logp is not None and 1.0 in tuple(slab.temperatures):
        rows = np.flatnonzero(~slab.bad) if slab.bad is not None else np.arange(len(slab))
        if len(rows) > TAIL_SAMPLE:  # a mean to two digits: a view of 1.28 M rows took 0.9 s
            rows = rows[np.linspace(0, len(rows) - 1, TAIL_SAMPLE).astype(np.int64)]
        if len(rows):
            tail = float(
                tail_mass(slab.topk_logp[rows], slab.lse[rows], slab.temperatures, temperature, k)
                .mean()
            )  # fmt: skip
    found = None if k >= num_classes - 1 else lookup(loss_name, temperature, k, num_classes, tail)
    return TargetFidelity(loss_name, float(temperature), int(k), int(num_classes), tail, found)


def report(fidelity: TargetFidelity | None, key: tuple, point: str | None = None) -> None:
    """Log the fidelity line; above BAND_LIMIT a warning, once per (`key`, `point`) in this
    process. A run passes no point: it stays quiet when its sweep already warned for the
    same cache, loss, T and K (the sweep's runs share its process)."""
    if fidelity is None:
        return
    if not fidelity.warn:
        logger.info("Targets: %s", fidelity.message())
        return
    with _warned_lock:
        first = (key, point) not in _warned
        _warned.update({(key, point), (key, None)})
    prefix = f"Grid point {point}: " if point else "Targets: "
    (logger.warning if first else logger.info)("%s%s", prefix, fidelity.message())


def log_run_fidelity(config: Any, plan: Any, slabs: Sequence[Any] | None) -> None:
    """`pld train`'s line: the tail mass at the loss's T and K', and the measured band.

    Args:
        config: the TrainConfig.
        plan: its TargetPlan.
        slabs: the first epoch's slabs (their first is read), or None without a cache.
    """
    if plan.cache_format == "none" or config.online_teacher is not None:
        return
    temperature = loss_temperature(config.loss.name, config.loss)
    k = plan.num_classes if plan.form == "dense" else plan.k
    slab = slabs[0] if slabs else None
    fidelity = assess(config.loss.name, temperature, k, plan.num_classes, slab)
    report(fidelity, (plan.manifest_hash, config.loss.name, temperature, k))


def warn_sweep(points: Sequence[tuple[str, Any]]) -> list[str]:
    """`pld sweep`'s check: one warning per grid point whose band is above BAND_LIMIT.

    Reads the first shard of view 0 of each cache once. Returns the names of the points
    warned about.
    """
    import storage  # noqa: PLC0415

    warned, readers = [], {}
    try:
        for name, config in points:
            if config.cache is None or config.online_teacher is not None:
                continue
            if config.cache not in readers:
                readers[config.cache] = storage.open_cache(config.cache_location())
            reader = readers[config.cache]
            m = reader.manifest
            temperature = loss_temperature(config.loss.name, config.loss)
            dense = config.target_form == "dense"
            k = m.num_classes if dense else (config.k or m.k)
            slab = None
            if not dense and temperature is not None:
                slab = reader.load_view(0, 0, min(reader.num_samples, reader.shard_size), k=k)
            fidelity = assess(config.loss.name, temperature, k, m.num_classes, slab)
            if fidelity is not None and fidelity.warn:
                key = (storage.manifest_hash(m), config.loss.name, temperature, k)
                report(fidelity, key, point=name)
                warned.append(name)
    finally:
        for reader in readers.values():
            reader.close()
    return warned
