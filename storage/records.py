"""Check the records of one (view, shard) and convert them to their stored dtypes.

The writer refuses, before touching any file, records of the wrong shape or dtype,
class indices outside [0, C), duplicated or unsorted top-K rows, NaN or Inf, and
values that would overflow float16 storage.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from storage import q8_layout
from storage.errors import RecordError
from storage.manifest import Manifest
from storage.schema import FLOAT16_MAX, UINT16_MAX, index_dtype

# log-probabilities computed as logit - lse in float32 can exceed 0 by rounding.
LOGP_TOLERANCE = 1e-2
INT32_MAX = np.iinfo(np.int32).max


def record_keys(manifest: Manifest, view: int) -> tuple[set[str], set[str]]:
    """(required, optional) record names for ``write_shard`` of this view."""
    required = {"lse", "gt_logit", "crop", "flip"}
    required |= {"topk_idx", "topk_logp"} if manifest.format == "topk" else {"logits"}
    optional = {"bad"}
    (required if view == 0 else optional).add("hw")
    return required, optional


def _array(
    records: Mapping, name: str, shape: tuple[int, ...], kinds: str, where: str
) -> np.ndarray:
    value = np.asarray(records[name])
    if value.shape != shape:
        raise RecordError(
            f"{where}: record '{name}' has shape {list(value.shape)}, expected {list(shape)}"
        )
    if value.dtype.kind not in kinds:
        wanted = {"f": "floating", "iu": "integer", "biu": "bool or integer"}[kinds]
        raise RecordError(f"{where}: record '{name}' has dtype {value.dtype}, expected {wanted}")
    return value


def _finite(name: str, value: np.ndarray, where: str, limit: float | None = None) -> None:
    if value.size == 0:
        return
    # min and max propagate NaN and expose +-Inf: two passes, no temporary arrays.
    lo, hi = float(value.min()), float(value.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        row = int(np.argwhere(~np.isfinite(value))[0][0])
        raise RecordError(
            f"{where}: record '{name}' holds NaN or Inf (first at row {row}: "
            f"{value[row]!r}); the teacher output is broken, not cacheable"
        )
    if limit is not None and max(-lo, hi) > limit:
        raise RecordError(
            f"{where}: record '{name}' holds |x| = {max(-lo, hi):g} > {limit:g}, "
            "which overflows float16 storage; check the teacher's logits scale"
        )


def _range(name: str, value: np.ndarray, lo: int, hi: int, where: str) -> None:
    if value.size and (int(value.min()) < lo or int(value.max()) > hi):
        raise RecordError(
            f"{where}: record '{name}' has values in [{int(value.min())}, {int(value.max())}], "
            f"expected within [{lo}, {hi}]"
        )


def prepare_records(
    manifest: Manifest,
    view: int,
    n: int,
    records: Mapping[str, np.ndarray],
    where: str,
    labels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Check one shard's records and return them in storage dtypes.

    Args:
        manifest: the cache's manifest (format, K, C, temperatures).
        view: the view index v; ``hw`` is required when v == 0 and dropped otherwise.
        n: rows in the shard (stop - start).
        records: name -> array with leading dim n (see ``CacheWriter.write_shard``).
        where: "view v shard s of PATH", prefixed to error messages.
        labels: the shard's true classes [n] (record precision q8: the true class's slot
            is read from ``gt_logit`` by the losses, so its rounding is not fed back).

    Returns:
        name -> contiguous array in its stored dtype; ``bad`` is always present.

    Raises:
        RecordError: a record is missing, unknown, or has a wrong shape, dtype or value.
    """
    if not isinstance(records, Mapping):
        raise RecordError(
            f"{where}: records must be a dict of arrays, got {type(records).__name__}"
        )
    required, optional = record_keys(manifest, view)
    missing, unknown = required - set(records), set(records) - required - optional
    if missing or unknown:
        raise RecordError(
            f"{where}: records missing {sorted(missing)} and unknown {sorted(unknown)}; "
            f"format '{manifest.format}' needs {sorted(required)} (optional {sorted(optional)})"
        )
    k, c, nt = manifest.k, manifest.num_classes, len(manifest.temperatures)
    out: dict[str, np.ndarray] = {}

    bad = np.zeros(n, bool)
    if "bad" in records:
        raw = _array(records, "bad", (n,), "biu", where)
        _range("bad", raw, 0, 1, where)
        bad = raw.astype(bool)
    out["bad"] = bad
    good = ~bad

    if manifest.format == "topk":
        idx = _array(records, "topk_idx", (n, k), "iu", where)
        _range("topk_idx", idx, 0, c - 1, where)
        logp = _array(records, "topk_logp", (n, k), "f", where)
        _finite("topk_logp", logp, where, FLOAT16_MAX)
        _check_topk_rows(idx[good], logp[good], where)
        out["topk_idx"] = np.ascontiguousarray(idx, dtype=index_dtype(c))
        if manifest.record_precision != "q8":
            out["topk_logp"] = np.ascontiguousarray(logp, dtype=np.float16)
    else:
        logits = _array(records, "logits", (n, c), "f", where)
        _finite("logits", logits, where, FLOAT16_MAX)
        out["logits"] = np.ascontiguousarray(logits, dtype=np.float16)

    lse = _array(records, "lse", (n, nt), "f", where)
    _finite("lse", lse, where)
    gt = _array(records, "gt_logit", (n,), "f", where)
    _finite("gt_logit", gt, where)
    if manifest.record_precision == "q8":  # 8-bit codes; the rest relative to lse(T=1)
        version, temps = manifest.schema_version, manifest.temperatures
        out.update(q8_layout.encode(version, temps, idx, logp, lse, gt, labels))
    else:
        out["lse"] = np.ascontiguousarray(lse, dtype=np.float32)
        out["gt_logit"] = np.ascontiguousarray(gt, dtype=np.float32)

    crop = _array(records, "crop", (n, 4), "iu", where)
    if manifest.record_precision == "q8" and crop.size and int(crop.max()) > UINT16_MAX:
        raise RecordError(
            f"{where}: record 'crop' holds {int(crop.max())} pixels, more than the "
            f"{UINT16_MAX} a q8 cache stores (uint16); use record_precision 'fp16' for images "
            "this large"
        )
    _range("crop", crop[:, :2], 0, INT32_MAX, where)
    _range("crop height/width", crop[:, 2:], 1, INT32_MAX, where)
    crop_dtype = np.uint16 if manifest.record_precision == "q8" else np.int32
    out["crop"] = np.ascontiguousarray(crop, dtype=crop_dtype)
    flip = _array(records, "flip", (n,), "biu", where)
    _range("flip", flip, 0, 1, where)
    out["flip"] = np.ascontiguousarray(flip, dtype=np.uint8)

    if view == 0:
        hw = _array(records, "hw", (n, 2), "iu", where)
        _range("hw", hw, 1, INT32_MAX, where)
        out["hw"] = np.ascontiguousarray(hw, dtype=np.int32)
    return out


def _check_topk_rows(idx: np.ndarray, logp: np.ndarray, where: str) -> None:
    # Only rows of decodable images: a bad image's row is filler.
    if logp.size == 0:
        return
    if float(logp.max()) > LOGP_TOLERANCE:
        row = int(np.argwhere(logp > LOGP_TOLERANCE)[0][0])
        raise RecordError(
            f"{where}: 'topk_logp' must be log-probabilities (<= 0), row {row} holds "
            f"{float(logp[row].max()):g}; store logit - logsumexp(logits), not raw logits"
        )
    unsorted = np.diff(logp, axis=1) > LOGP_TOLERANCE
    if unsorted.any():
        row = int(np.argwhere(unsorted)[0][0])
        raise RecordError(f"{where}: 'topk_logp' rows must be sorted descending; row {row} is not")
    dup = np.diff(np.sort(idx, axis=1), axis=1) == 0
    if dup.any():
        row = int(np.argwhere(dup)[0][0])
        raise RecordError(f"{where}: 'topk_idx' row {row} repeats a class: {idx[row].tolist()}")
