"""The running sums of a training epoch, kept on the device and checkpointed mid-epoch.

Adding a step's loss, accuracy and dropped weight stays on the device (no read-back to
the host per step). A mid-epoch checkpoint stores the sums summed over DDP ranks, so a
run resumed in the middle of an epoch reports the same epoch record as an uninterrupted
one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pld_pipeline.student.run.ddp import DistContext

_TENSORS = ("loss_sum", "correct", "nonfinite", "dropped_sum", "dropped_n")
_TIMES = ("data_time_s", "target_time_s", "elapsed_s")


@dataclass
class EpochTotals:
    """Sums over the steps of one epoch so far (this rank's share).

    Attributes:
        loss_sum: float64 [] sum of finite batch losses times batch size.
        correct: int64 [] top-1 hits.
        nonfinite: int64 [] steps whose loss was NaN or infinite.
        dropped_sum, dropped_n: float64 [] PLD's dropped teacher weight summed over samples,
            and the number of samples it was summed over.
        steps, samples: host counters (known without reading the device).
        unreadable: images left out of this epoch's batches because they could not be read.
        data_time_s, target_time_s, elapsed_s: seconds waiting for data, getting targets,
            and in the epoch so far (elapsed is set when a checkpoint is written).
    """

    loss_sum: torch.Tensor
    correct: torch.Tensor
    nonfinite: torch.Tensor
    dropped_sum: torch.Tensor
    dropped_n: torch.Tensor
    steps: int = 0
    samples: int = 0
    unreadable: int = 0
    data_time_s: float = 0.0
    target_time_s: float = 0.0
    elapsed_s: float = 0.0

    @classmethod
    def zeros(cls, device: torch.device) -> EpochTotals:
        f64 = {"dtype": torch.float64, "device": device}
        i64 = {"dtype": torch.int64, "device": device}
        return cls(
            loss_sum=torch.zeros((), **f64),
            correct=torch.zeros((), **i64),
            nonfinite=torch.zeros((), **i64),
            dropped_sum=torch.zeros((), **f64),
            dropped_n=torch.zeros((), **f64),
        )

    @torch.no_grad()
    def add(
        self,
        loss: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        dropped: torch.Tensor | None = None,
    ) -> None:
        """Add one step (loss [], logits [B, C], labels [B], PLD dropped weight [B] or None)."""
        finite = torch.isfinite(loss)
        self.loss_sum += torch.where(finite, loss.detach().double(), 0.0) * len(labels)
        self.nonfinite += (~finite).long()
        self.correct += (logits.argmax(dim=1) == labels).sum()
        if dropped is not None:
            self.dropped_sum += dropped.detach().double().sum()
            self.dropped_n += dropped.numel()
        self.steps += 1
        self.samples += len(labels)

    def reduced(self, ctx: DistContext) -> dict[str, Any]:
        """The sums over every rank as a plain checkpointable dict (reads the device)."""
        device = self.loss_sum.device
        counts = [self.samples, self.unreadable]
        values = ctx.sum([float(getattr(self, name)) for name in _TENSORS] + counts, device)
        state: dict[str, Any] = dict(zip(_TENSORS, values[:-2], strict=True))
        state["samples"], state["unreadable"] = int(values[-2]), int(values[-1])
        state["steps"] = self.steps
        state.update({name: float(getattr(self, name)) for name in _TIMES})
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device, holder: bool) -> EpochTotals:
        """Rebuild from `reduced()`: the rank that is `holder` takes the global sums, the
        others start from zero (their sum over ranks is then the stored one)."""
        totals = cls.zeros(device)
        if holder:
            for name in _TENSORS:
                getattr(totals, name).fill_(state[name])
            totals.samples = int(state["samples"])
            totals.unreadable = int(state.get("unreadable", 0))  # absent before it was counted
            for name in _TIMES:
                setattr(totals, name, float(state[name]))
        totals.steps = int(state["steps"])
        return totals
