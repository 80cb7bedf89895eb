"""One view's records held in memory (a ``ViewSlab``), and batch gathering from it.

A slab covers samples [start, start + n) of view ``view``. Batches are gathered by
sample index relative to ``start``, so sampler order and batch size never depend on
how the cache was written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.errors import RequestError
from storage.schema import index_dtype


@dataclass
class ViewSlab:
    """Records of samples [start, start + n) of one view (or rows gathered from them).

    Attributes:
        view: view index v.
        start: first sample index of the slab.
        topk_idx: top-K classes [n, K] int16/int32, or None for dense logits.
        topk_logp: their log-probabilities at T=1 [n, K] float16 (float32, dequantized, for
            record precision q8), or None.
        logits: dense teacher logits [n, C] float16 (format full, k=None), or None.
        lse: logsumexp(z / T) [n, nT] float32, one column per ``temperatures`` entry.
        gt_logit: teacher logit of the true class [n] float32.
        crop: crop boxes [n, 4] int32 (top, left, h, w) in source pixels.
        flip: horizontal flip [n] uint8.
        label: true classes [n] int32.
        temperatures: the temperatures of the ``lse`` columns.
        bad: [n] bool, True where the image could not be decoded (row is filler).
        index: absolute sample indices [n] int64 of gathered rows; None when the rows
            are the contiguous range starting at ``start``.
    """

    view: int
    start: int
    topk_idx: np.ndarray | None
    topk_logp: np.ndarray | None
    logits: np.ndarray | None
    lse: np.ndarray
    gt_logit: np.ndarray
    crop: np.ndarray
    flip: np.ndarray
    label: np.ndarray
    temperatures: tuple[float, ...]
    bad: np.ndarray | None = None
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the slab's arrays."""
        arrays = (
            self.topk_idx,
            self.topk_logp,
            self.logits,
            self.lse,
            self.gt_logit,
            self.crop,
            self.flip,
            self.label,
            self.bad,
            self.index,
        )
        return sum(a.nbytes for a in arrays if a is not None)

    @property
    def sample_index(self) -> np.ndarray:
        """Absolute sample indices of the rows [n] int64."""
        if self.index is not None:
            return self.index
        return np.arange(self.start, self.start + len(self), dtype=np.int64)

    def gather(self, idx: np.ndarray) -> ViewSlab:
        """Rows ``idx`` (relative to ``start``) as a new slab, in the order given.

        Args:
            idx: row indices [B] int in [0, n).

        Returns:
            A ViewSlab of B rows with ``index`` set to their absolute sample indices.

        Raises:
            RequestError: an index is outside [0, n).
        """
        idx = np.asarray(idx)
        n = len(self)
        # Negative indices would silently wrap around: refuse them.
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise RequestError(
                f"gather indices must be in [0, {n}) (relative to start={self.start}), got "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        return ViewSlab(
            self.view,
            self.start,
            _take(self.topk_idx, idx),
            _take(self.topk_logp, idx),
            _take(self.logits, idx),
            _take(self.lse, idx),
            _take(self.gt_logit, idx),
            _take(self.crop, idx),
            _take(self.flip, idx),
            _take(self.label, idx),
            self.temperatures,
            _take(self.bad, idx),
            _take(self.index, idx) if self.index is not None else idx + self.start,
        )


def _take(array: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    # np.take is about 2x faster than array[idx] for row gathers of 2-D arrays.
    return None if array is None else np.take(array, idx, axis=0)


def topk_from_logits(
    logits: np.ndarray, k: int, lse_t1: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k classes and their log-probabilities at T=1 from dense logits.

    Args:
        logits: [n, C] float16/float32 teacher logits.
        k: number of classes to keep, 1 <= k <= C.
        lse_t1: [n] float32 logsumexp of the logits at T=1 (the teacher's exact value
            when cached); computed from ``logits`` when None.

    Returns:
        (topk_idx [n, k] same int dtype as the cache would store, topk_logp [n, k] float16),
        sorted by descending logit.
    """
    z = np.asarray(logits, dtype=np.float32)
    n, c = z.shape
    part = np.argpartition(-z, k - 1, axis=1)[:, :k] if k < c else np.tile(np.arange(c), (n, 1))
    vals = np.take_along_axis(z, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    if lse_t1 is None:
        m = z.max(axis=1, keepdims=True)
        lse_t1 = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    logp = vals - np.asarray(lse_t1, dtype=np.float32)[:, None]
    return idx.astype(index_dtype(c)), logp.astype(np.float16)
