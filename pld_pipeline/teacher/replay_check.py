"""The replay check: recompute the teacher on random cached records and compare.

Like TinyViT's check of saved logits: a cache is only trusted once a fresh teacher forward
on replayed views gives the cached log-probabilities back.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

import storage
from pld_pipeline import errors
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.teacher.cache_build import images_of, teacher_of
from pld_pipeline.teacher.compute import compute_views
from pld_pipeline.teacher.options import PassOptions
from storage.q8_layout import max_error

logger = logging.getLogger(__name__)


@dataclass
class ReplayCheck:
    """Cached vs. recomputed teacher log-probs on a random sample of records."""

    samples: int
    max_abs_error: float
    tolerance: float
    passed: bool
    unreadable: list[str] = field(default_factory=list)  # picked keys that failed to decode now

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replay_check(config: CacheConfig, seed: int = 0) -> ReplayCheck:
    """Recompute the teacher on `replay_check_samples` random (view, sample) records.

    Compares the cached top-K log-probs (or full logits' log-softmax) with a fresh forward
    on the replayed view, like TinyViT's check of saved logits.

    Raises:
        errors.ReplayCheckError: the largest error exceeds `replay_check_tolerance`.
    """
    count = config.replay_check_samples
    if count == 0:
        return ReplayCheck(0, 0.0, config.replay_check_tolerance, True)
    reader = storage.open_cache(config.location())
    manifest = reader.manifest
    rng = np.random.default_rng(seed)
    good = np.flatnonzero(~reader.bad_mask().any(axis=0))
    picks = rng.choice(good, size=min(count, len(good)), replace=False)
    views = rng.integers(0, manifest.views.num_views, size=len(picks))
    model = teacher_of(config).model
    dataset = images_of(config, manifest)
    # The stored manifest is the spec, as in `build_shard`: the check replays what was written.
    options = PassOptions(device=config.device, batch_size=1, num_workers=0, amp=config.amp)
    worst = 0.0
    unreadable: list[str] = []
    for view, sample in zip(views.tolist(), picks.tolist()):
        # One record read per check: a whole view of ImageNet would be hundreds of MB.
        cached = reader.load_view(view, start=sample, stop=sample + 1)
        try:
            fresh = compute_views(model, dataset, manifest, [view], sample, sample + 1, options)
        except errors.BadImageError as exc:  # fine in the pass, unreadable now: not checkable
            logger.warning("Replay check skips sample %d: %s", sample, exc)
            unreadable.append(dataset.keys[sample])
            continue
        q8_version = manifest.schema_version if manifest.record_precision == "q8" else None
        worst = max(worst, _logp_error(cached, 0, fresh[view], q8_version))
    checked = len(picks) - len(unreadable)
    if unreadable and not checked:
        raise errors.ReplayCheckError(
            f"Replay check of {config.output}: none of the {len(picks)} picked images can be "
            f"decoded now (first: {unreadable[0]!r}), though the pass decoded them. Check that "
            "the dataset folder is still there and readable, then run the pass again to finish."
        )
    passed = worst <= config.replay_check_tolerance
    result = ReplayCheck(checked, worst, config.replay_check_tolerance, passed, unreadable)
    if not passed:
        raise errors.ReplayCheckError(
            f"Replay check failed for {config.output}: cached and recomputed teacher log-probs "
            f"differ by up to {worst:.4g} (tolerance {config.replay_check_tolerance}). The "
            "teacher, its weights or the images changed since caching; rebuild the cache "
            "with overwrite=True, or raise replay_check_tolerance if AMP noise explains it."
        )
    return result


def _logp_error(
    slab: storage.ViewSlab, row: int, fresh: dict[str, np.ndarray], q8_version: int | None = None
) -> float:
    """Largest |cached - fresh| log-prob over the cached classes of one record, beyond the
    quantization error a q8 record of schema version `q8_version` may hold (None: fp16)."""
    if slab.logits is not None:
        cached = torch.log_softmax(torch.from_numpy(slab.logits[row].astype(np.float32)), -1)
        recomputed = torch.log_softmax(torch.from_numpy(fresh["logits"][0]), -1)
        return float((cached - recomputed).abs().max())
    idx = slab.topk_idx[row].astype(np.int64)
    cached = slab.topk_logp[row].astype(np.float32)
    # q8 records hold each log-prob to within their quantization error: not the teacher's.
    allowance = 0.0 if q8_version is None else float(max_error(q8_version, cached[None]).max())
    # Compare class by class: near-ties may swap order between the two forwards.
    fresh_logp = dict(zip(fresh["topk_idx"][0].tolist(), fresh["topk_logp"][0].tolist()))
    errors_ = []
    for c, value in zip(idx.tolist(), cached.tolist()):
        if c in fresh_logp:
            errors_.append(max(0.0, abs(value - fresh_logp[c]) - allowance))
        else:  # fell out of the fresh top-K: it must then be at most the K-th log-prob
            errors_.append(max(0.0, value - allowance - float(fresh["topk_logp"][0][-1])))
    return max(errors_) if errors_ else 0.0
