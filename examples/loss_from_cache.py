"""Distillation losses on one batch read from a cache, in your own training loop.

    python examples/loss_from_cache.py /caches/in1k-r152-topk100

Reads view 0 into memory, gathers a batch of samples from it, and computes every loss on
stand-in student logits (your model's output in a real loop). No teacher is built.
"""

import sys

import numpy as np
import torch

import storage
from pld_pipeline.losses import CachedTargets, make_loss

reader = storage.open_cache(sys.argv[1])
slab = reader.load_view(0)  # every record of view 0, in memory
rows = np.random.default_rng(0).choice(len(slab), size=min(8, len(slab)), replace=False)
batch = slab.gather(rows)  # [B] rows: top-K classes and log-probs, lse, gt_logit, label
targets = CachedTargets(
    topk_idx=torch.from_numpy(batch.topk_idx.astype(np.int64)),
    topk_logp=torch.from_numpy(batch.topk_logp.astype(np.float32)),
    lse=torch.from_numpy(batch.lse),
    temperatures=batch.temperatures,
    gt_logit=torch.from_numpy(batch.gt_logit),
)
labels = torch.from_numpy(batch.label.astype(np.int64))
student_logits = torch.randn(len(rows), reader.num_classes, requires_grad=True)

for name, params in [("pld", {"temperature": 1.0}), ("kd", {"temperature": 4.0}), ("ce", {})]:
    loss = make_loss(name, **params)(student_logits, targets, labels)
    loss.backward()  # gradients flow to the student only
    print(f"{name}: {loss.item():.4f}")
