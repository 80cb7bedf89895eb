"""Run metrics: the per-epoch JSON-lines file (what is measured: `pld_pipeline.student.run.eval_metrics`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


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
