"""Run metrics: the per-epoch JSON-lines file and top-k accuracy counts."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> list[int]:
    """How many rows have their label among the top-k logits, for each k.

    Args:
        logits: [B, C] scores.
        labels: [B] int class indices.
        ks: the k values; each is clipped to C (top-5 of a 3-class problem is top-3).

    Returns:
        one count per k (ints).
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [B, kmax]
    hit = top.eq(labels.view(-1, 1))  # [B, kmax]
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


class MetricsLog:
    """Append-only JSON-lines file, one record per epoch, flushed as each line is written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line (NaN/inf become null, so every line is strict JSON)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(_finite(record), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """All records so far (empty when the file does not exist)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def keep_epochs_before(self, epoch: int) -> None:
        """Drop records of epochs >= `epoch` (a resumed run redoes them)."""
        kept = [r for r in self.read() if r.get("epoch", -1) < epoch]
        self.path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
