"""Teacher logits -> cache records: top-K log-probs or full logits, LSE per temperature, gt logit.

Log-probabilities are stored with the logsumexp rather than probabilities, so tail mass,
raw logits (logp + lse) and other temperatures stay exact for the losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pld_pipeline.errors import ConfigError

FORMATS = ("topk", "full")


def check_output_spec(
    fmt: str, k: int, temperatures: Sequence[float], num_classes: int | None
) -> None:
    """Validate format, K and temperatures before any work (and K against C once known).

    Raises:
        ConfigError: unknown format, K < 1, K > C, no or non-positive temperatures.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown cache format {fmt!r}; use one of {FORMATS}.")
    if fmt == "topk" and k < 1:
        raise ConfigError(f"k must be >= 1 for the topk format, got {k}.")
    if fmt == "topk" and num_classes is not None and k > num_classes:
        raise ConfigError(
            f"k={k} is larger than the teacher's {num_classes} classes; use k <= {num_classes} "
            "or format='full' to store every logit."
        )
    temps = list(temperatures)
    if not temps or any(not (t > 0) for t in temps):
        raise ConfigError(
            f"Temperatures must be a non-empty list of positive numbers, got {temps}."
        )


def check_teacher_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Raise ConfigError when a label is outside [0, num_classes)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(
            f"Labels span [{int(labels.min())}, {int(labels.max())}] but the teacher has "
            f"{num_classes} classes; pin the dataset's class list to the teacher's classes."
        )


def logits_to_records(
    logits: torch.Tensor,
    labels: torch.Tensor,
    fmt: str,
    k: int,
    temperatures: Sequence[float],
    validate: bool = True,
) -> dict[str, torch.Tensor]:
    """Cache records of one batch, computed in float32 on the logits' device.

    Args:
        logits: [B, C] teacher logits (any float dtype; computed in float32).
        labels: [B] int true classes.
        fmt: "topk" or "full".
        k: number of classes kept per sample in the topk format.
        temperatures: T values for `lse`.
        validate: check K and the label range here (reads labels back from the device, a
            sync on CUDA; the teacher pass validates once per shard and passes False).

    Returns:
        topk: `topk_idx` [B, K] int64 (descending logit), `topk_logp` [B, K] float32
        (logit - logsumexp(logits), i.e. log-softmax at T=1); full: `logits` [B, C] float32;
        always `lse` [B, nT] float32 = logsumexp(logits / T) and `gt_logit` [B] float32.

    Raises:
        ConfigError: K > C, or a label outside [0, C).
    """
    z = logits.float()
    num_classes = z.shape[1]
    labels = labels.to(device=z.device, dtype=torch.int64)
    if validate:
        check_output_spec(fmt, k, temperatures, num_classes)
        check_teacher_labels(labels, num_classes)
    lse = torch.stack([torch.logsumexp(z / float(t), dim=1) for t in temperatures], dim=1)
    out = {"lse": lse, "gt_logit": z.gather(1, labels[:, None]).squeeze(1)}
    if fmt == "full":
        out["logits"] = z
        return out
    values, idx = torch.topk(z, k, dim=1, largest=True, sorted=True)
    temps = [float(t) for t in temperatures]
    lse1 = lse[:, temps.index(1.0)][:, None] if 1.0 in temps else torch.logsumexp(z, 1, True)
    out["topk_idx"] = idx
    out["topk_logp"] = values - lse1
    return out


def placeholder_records(
    n: int, num_classes: int, fmt: str, k: int, temperatures: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Records for samples with no teacher output (bad images): those of all-zero logits.

    Valid for any storage check (finite, descending, in range) and marked bad by the
    caller, so no reader mistakes them for the teacher's opinion.
    """
    z = torch.zeros(n, num_classes)
    return logits_to_records(z, torch.zeros(n, dtype=torch.int64), fmt, k, temperatures)
