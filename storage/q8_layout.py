"""Where a q8 record's numbers go, per schema version (storage/quantize.py makes the numbers).

Version 2, the first q8 layout, stores ``topk_log2_step`` [n] int8 (the step is 2**e),
``topk_code`` [n, K] uint8 (column 0, the top-1's, is always 0), ``lse_gap`` [n, nT]
float16 (0 at T = 1) and ``gt_logp`` [n] float16 for every record.

Version 3 leaves out what is always zero or already stored, and steps in half octaves:

- ``topk_code`` [n, K] uint8: column 0, which the top-1 (stored exactly) does not need,
  holds the record's step exponent e + 128, the step being 2**(e / 2): a record uses 181
  to 255 of its 256 codes, not 128 to 255 (a quarter less error,
  docs/choosing-k-t-precision.md); columns 1..K-1 the increments of ranks 2..K. One array
  fewer to read than a separate step array, which is most of what a whole-view load of
  small records costs (each array's chunks cost about the same however small);
- ``lse_gap`` [n, nT - 1] float16: the temperatures other than 1, in manifest order (no
  array at all where 1 is the only one: a zero-width array's chunks would be zero-width,
  which the zarr v3 spec's regular grid does not allow and readers such as zarrs reject);
- ``gt_logp`` [n] float16, 0 where the label is among the record's K classes: the label's
  log-probability is then read from its slot, with the same 8-bit rounding as every other
  class (version 2 rounded that slot apart and kept the label's float16 value; measured on
  a real teacher, the losses' gradients move by under 0.1 % of fp16's for it), and zeros
  compress to nothing.

Together with blosc-zstd (the q8 default, ``schema.default_compressor``) that takes a
real teacher's top-10 record from 36.9 to under 30 bytes. Readers turn either layout into
the same slab fields (``decode``), so the losses never see the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from storage import quantize
from storage.quantize import dequantize_logp, quantize_logp, relative_lse

STEP_BIAS = 128  # version 3: topk_code[:, 0] = e + 128, e in [-48, 127]


@dataclass(frozen=True)
class Q8Layout:
    """What one schema version stores of a q8 record."""

    steps_per_octave: int
    step_array: str | None  # None: the step exponent is in topk_code[:, 0] (version 3)
    leaves_out_zeros: bool  # version 3: no T = 1 gap, gt_logp 0 where the slot holds it


def q8_layout(schema_version: int) -> Q8Layout:
    """The q8 layout of a cache of this schema version (2 or later)."""
    if schema_version == 2:
        return Q8Layout(1, "topk_log2_step", leaves_out_zeros=False)
    return Q8Layout(2, None, leaves_out_zeros=True)


def stored_temperatures(temperatures: Sequence[float], schema_version: int) -> list[int]:
    """Indices into ``temperatures`` of the ``lse_gap`` columns a q8 cache stores."""
    keep_t1 = not q8_layout(schema_version).leaves_out_zeros
    return [j for j, t in enumerate(temperatures) if keep_t1 or float(t) != 1.0]


def encode(
    schema_version: int,
    temperatures: Sequence[float],
    idx: np.ndarray,
    logp: np.ndarray,
    lse: np.ndarray,
    gt_logit: np.ndarray,
    labels: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """A shard's checked top-K records as the q8 arrays of this schema version.

    Args:
        schema_version: the cache's version (a resumed version-2 cache keeps its layout).
        temperatures: the manifest's, with 1.0 among them.
        idx: [n, K] classes; logp: [n, K] log-probabilities at T = 1, descending.
        lse: [n, nT] absolute logsumexps; gt_logit: [n] the true class's logit.
        labels: [n] true classes (version 2 rounds the label's slot apart; version 3 reads
            the label's log-probability from its slot). Version 3 needs them.
    """
    layout = q8_layout(schema_version)
    label_slot = None if labels is None else idx == np.asarray(labels)[:, None]
    exact = None if layout.leaves_out_zeros else label_slot
    logp1, step, code = quantize_logp(logp, exact, layout.steps_per_octave)
    one = lse[:, list(temperatures).index(1.0)].astype(np.float64)
    gt_logp = (gt_logit.astype(np.float64) - one).astype(np.float16)
    gap = relative_lse(lse, tuple(temperatures))
    arrays = {"topk_logp1": logp1}
    if layout.step_array is None:
        code[:, 0] = (step.astype(np.int16) + STEP_BIAS).astype(np.uint8)
    else:
        arrays[layout.step_array] = step
    if layout.leaves_out_zeros:
        gap = gap[:, stored_temperatures(temperatures, schema_version)]
        if label_slot is None:
            raise ValueError("q8 records of schema version 3 need the shard's labels")
        gt_logp[label_slot.any(axis=1)] = 0
    arrays.update(topk_code=code, gt_logp=gt_logp)
    if gap.shape[1]:
        arrays["lse_gap"] = np.ascontiguousarray(gap)
    return arrays


def decode(
    schema_version: int,
    temperatures: Sequence[float],
    data: dict[str, np.ndarray],
    labels: np.ndarray,
) -> None:
    """Replace the q8 arrays in ``data`` (read from a cache) by the slab's float32
    ``topk_logp`` [n, K], ``lse`` [n, nT] (relative: lse(1) = 0) and ``gt_logit`` [n]."""
    layout = q8_layout(schema_version)
    code = data.pop("topk_code")
    if layout.step_array is None:
        step = code[:, 0].astype(np.int16) - STEP_BIAS
    else:
        step = data.pop(layout.step_array)
    data["topk_logp"] = dequantize_logp(data.pop("topk_logp1"), step, code, layout.steps_per_octave)
    gt_logp = data.pop("gt_logp").astype(np.float32)
    gap = data.pop("lse_gap", None)  # none in version 3 when T = 1 is the only temperature
    if layout.leaves_out_zeros:
        lse = np.zeros((len(gt_logp), len(temperatures)), np.float32)
        if gap is not None:
            lse[:, stored_temperatures(temperatures, schema_version)] = gap
        idx, rows = data["topk_idx"], np.arange(len(gt_logp))
        hit = idx == np.asarray(labels).astype(idx.dtype)[:, None]  # at most one per row
        slot = hit.argmax(axis=1)
        gt_logp = np.where(hit[rows, slot], data["topk_logp"][rows, slot], gt_logp)
        data["lse"] = lse
    else:
        data["lse"] = gap.astype(np.float32)
    data["gt_logit"] = gt_logp


def max_error(schema_version: int, logp: np.ndarray) -> np.ndarray:
    """The largest error [n, K] a q8 record of this version can hold on these log-probs."""
    return quantize.max_error(logp, q8_layout(schema_version).steps_per_octave)
