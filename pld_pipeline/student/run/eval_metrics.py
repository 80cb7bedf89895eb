"""Evaluation metrics: top-1, top-5, NLL, expected calibration error and mean confidence.

Accuracy alone hides what distillation does to a student's probabilities; the
distillation literature reports calibration next to it (RS-KD shows that top-K targets
make students over-confident). Every evaluation therefore records, in percent where a
percentage makes sense:

- `top1`, `top5`: share of samples whose label is the argmax / among the 5 largest logits.
- `nll`: mean negative log-likelihood of the label, -log softmax(z)[y], in nats.
- `confidence`: mean of the top softmax probability (percent), to set against top-1:
  confidence above accuracy is over-confidence.
- `ece`: expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural
  Networks", eq. 3) with 15 equal-width confidence bins, in percent:
  ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|, where bin m (m = 1..15) holds the
  samples whose top probability lies in ((m-1)/15, m/15]; a confidence of exactly 0 (never
  reached by a softmax) goes to the first bin.

Evaluation adds per-batch sums into one float64 vector on the device (no host sync per
batch); the vector is additive over batches and DDP ranks, and `finish` turns it into
the metrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ECE_BINS = 15
# Layout of the sums vector: count, nll, top-1 hits, top-5 hits, confidence, then per bin
# the confidence sum and the top-1 hits.
_SCALARS = 5
# Every metric an evaluation reports and which way is better (None: no better direction;
# the mean confidence is read against top-1, not on its own).
METRIC_GOALS: dict[str, str | None] = {
    "top1": "max", "top5": "max", "nll": "min", "ece": "min", "confidence": None,
}  # fmt: skip


def bin_edges(bins: int = ECE_BINS, device: torch.device | None = None) -> torch.Tensor:
    """Inner edges 1/bins .. (bins-1)/bins in float64 ([bins - 1]), each the nearest double
    to k/bins, so a confidence of exactly k/bins falls in bin k (1-based): bins are (lo, hi]."""
    return torch.arange(1, bins, dtype=torch.float64, device=device) / bins


def bin_index(confidence: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """0-based confidence bin of each value ([N] float64 -> [N] int64): bin j holds (j/bins,
    (j+1)/bins]; 0 goes to bin 0."""
    edges = bin_edges(bins, confidence.device)
    return torch.bucketize(confidence.double(), edges, right=False)


def new_sums(bins: int = ECE_BINS, device: torch.device | None = None) -> torch.Tensor:
    """An empty sums vector ([5 + 2 * bins] float64) for `add_batch`."""
    return torch.zeros(_SCALARS + 2 * bins, dtype=torch.float64, device=device)


def add_batch(sums: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Add one batch's counts to `sums` in place (and return it).

    Args:
        sums: from `new_sums` (its length fixes the number of bins).
        logits: [B, C] scores (any float dtype; computed in float64).
        labels: [B] int class indices.
    """
    bins = (sums.numel() - _SCALARS) // 2
    z = logits.detach().double()
    labels = labels.to(z.device)
    logp = F.log_softmax(z, dim=1)
    conf, pred = logp.max(dim=1)
    conf = conf.exp()
    hit1 = pred.eq(labels).double()
    kmax = min(5, z.shape[1])
    hit5 = z.topk(kmax, dim=1).indices.eq(labels.view(-1, 1)).any(dim=1).double()
    nll = -logp.gather(1, labels.view(-1, 1)).squeeze(1)
    which = bin_index(conf, bins)
    sums[0] += len(labels)
    sums[1] += nll.sum()
    sums[2] += hit1.sum()
    sums[3] += hit5.sum()
    sums[4] += conf.sum()
    base = _SCALARS
    sums[base : base + bins] += torch.bincount(which, weights=conf, minlength=bins)
    sums[base + bins :] += torch.bincount(which, weights=hit1, minlength=bins)
    return sums


def finish(sums: torch.Tensor | list[float]) -> dict[str, float]:
    """Metrics from summed counts: top1, top5, ece, confidence (percent), nll (nats), samples.

    An empty evaluation (no samples) gives NaN metrics and samples 0.
    """
    s = torch.as_tensor(sums, dtype=torch.float64).cpu()
    bins = (s.numel() - _SCALARS) // 2
    n = float(s[0])
    if n == 0:
        nan = float("nan")
        return {"top1": nan, "top5": nan, "nll": nan, "ece": nan, "confidence": nan, "samples": 0}
    conf_sum = s[_SCALARS : _SCALARS + bins]
    hit_sum = s[_SCALARS + bins :]
    # sum_m |B_m|/n * |acc_m - conf_m| = sum_m |hits_m - conf_sum_m| / n (empty bins add 0).
    ece = float((hit_sum - conf_sum).abs().sum()) / n
    return {
        "top1": 100.0 * float(s[2]) / n,
        "top5": 100.0 * float(s[3]) / n,
        "nll": float(s[1]) / n,
        "ece": 100.0 * ece,
        "confidence": 100.0 * float(s[4]) / n,
        "samples": int(n),
    }
