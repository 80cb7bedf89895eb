"""The teacher pass: one (view, shard) of a dataset through the teacher, as records for the writer.

Decoding and view replay run in DataLoader workers (each sample decoded once per call,
whatever the number of views asked for, see _view_images.py); the forward runs in
inference mode, in eval mode, channels_last with autocast (bf16/fp16) on CUDA and plain
fp32 on the CPU (see device.py). Records stay on the device until the end of the
call and are copied back once, so the GPU never waits on a per-batch host sync.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pld_pipeline.device_policy import resolve_amp, resolve_device
from pld_pipeline.errors import BadImageError, ConfigError, NonFiniteTeacherError
from pld_pipeline.teacher._device import prepare_model, teacher_logits
from pld_pipeline.teacher._view_images import make_teacher_loader
from pld_pipeline.teacher.options import DEFAULT_OPTIONS, PassOptions
from pld_pipeline.teacher.outputs import (
    check_output_spec,
    check_teacher_labels,
    logits_to_records,
    placeholder_records,
)

if TYPE_CHECKING:
    from pld_pipeline.datasets import ImageFolderDataset
    from storage import Manifest

logger = logging.getLogger(__name__)


def compute_shard(
    model: nn.Module,
    dataset: ImageFolderDataset,
    manifest: Manifest,
    view: int,
    start: int,
    stop: int,
    options: PassOptions = DEFAULT_OPTIONS,
) -> dict[str, np.ndarray]:
    """Records of samples [start, stop) under view `view`, ready for `CacheWriter.write_shard`.

    `compute_views` for a single view: see it for the arguments, records and errors.
    """
    return compute_views(model, dataset, manifest, [view], start, stop, options)[view]


def compute_views(
    model: nn.Module,
    dataset: ImageFolderDataset,
    manifest: Manifest,
    views: Sequence[int],
    start: int,
    stop: int,
    options: PassOptions = DEFAULT_OPTIONS,
) -> dict[int, dict[str, np.ndarray]]:
    """Teacher records of samples [start, stop) for several views, decoding each image once.

    What is computed comes from the manifest alone, so a cache's own (stored) manifest
    reproduces its records; `options` only say where and how fast.

    Args:
        model: the teacher (moved to the device, put in eval mode, channels_last on CUDA).
        dataset: an ImageFolderDataset (keys, labels, load_rgb).
        manifest: the cache's spec (a storage.Manifest or alike): `views` (mode, num_views,
            seed, scale, ratio, crop_pct), `format`, `k`, `temperatures` (what to store, see
            outputs.logits_to_records) and `teacher` (input_size, mean, std, interpolation:
            the teacher's preprocessing).
        views: distinct view indices (eval mode: only 0; replay: < num_views).
        start, stop: the sample range (a shard).
        options: device, batch size, workers, AMP, bad-image policy (see PassOptions).

    Returns:
        view -> records with leading dim n = stop - start: `topk_idx` int32 [n, K] and
        `topk_logp` float32 [n, K] (or `logits` float32 [n, C]), `lse` float32 [n, nT],
        `gt_logit` float32 [n], `crop` int32 [n, 4], `flip` uint8 [n], `bad` bool [n],
        `hw` int32 [n, 2]. Bad rows hold the records of all-zero logits and a filler box.

    Raises:
        BadImageError: an image cannot be decoded and skip_bad_images is False (names it).
        NonFiniteTeacherError: NaN/Inf teacher logits (names the sample keys).
        ConfigError: K > C, labels outside the teacher's classes, a bad range or views.
    """
    views = [int(v) for v in views]
    _check_request(dataset, manifest, views, start, stop, options.batch_size)
    dev = resolve_device(options.device)
    amp = resolve_amp(options.amp, dev)
    prepare_model(model, dev)
    loader = make_teacher_loader(dataset, manifest, views, start, stop, options, dev)
    batches = _batches(loader, start, stop)
    return run_batches(model, batches, dataset, manifest, views, start, stop, dev, amp)


def run_batches(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    dataset: ImageFolderDataset,
    manifest: Manifest,
    views: Sequence[int],
    start: int,
    stop: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[int, dict[str, np.ndarray]]:
    """The pass after decoding: batches of replayed views -> records (the inner loop of
    `compute_views`, public so a benchmark can feed it already-decoded batches).

    Args:
        model: prepared with `device.prepare_model(model, device)`.
        batches: `make_teacher_loader` batches ("image" uint8 or normalised float [b, nV, 3, S, S], "index" [b],
            "label" [b], "crop" [b, nV, 4], "flip" [b, nV], "hw" [b, 2], "bad" [b]), covering
            [start, stop).
        device, amp_dtype: resolved (`resolve_device`, `resolve_amp`).
        Others: as `compute_views`.

    Returns:
        As `compute_views`.
    """
    views = list(views)
    fmt, k, temperatures = manifest.format, manifest.k, manifest.temperatures
    mean, std = manifest.teacher.mean, manifest.teacher.std
    out = _Collector(dataset, len(views), start, stop)
    with torch.inference_mode():
        for batch in batches:
            rows = out.add_views(batch)
            if len(rows) == 0:
                continue
            everyone = len(rows) == len(batch["index"])
            good = batch["image"] if everyone else batch["image"][~batch["bad"]]
            logits = teacher_logits(model, good.flatten(0, 1), mean, std, device, amp_dtype)
            if out.num_classes is None:
                out.num_classes = logits.shape[1]
                check_output_spec(fmt, k, temperatures, out.num_classes)
                check_teacher_labels(out.labels, out.num_classes)
            # Labels travel in the (pinned) batch: an asynchronous copy, no per-batch sync.
            labels = batch["label"] if everyone else batch["label"][~batch["bad"]]
            labels = labels.repeat_interleave(len(views)).to(device, non_blocking=True)
            records = logits_to_records(logits, labels, fmt, k, temperatures, validate=False)
            out.add_records(rows, records, torch.isfinite(logits).all(dim=1))
    if out.num_classes is None:  # every image was bad: the manifest knows C
        out.num_classes = int(manifest.teacher.num_classes)
    return out.finish(views, fmt, k, temperatures)


def _batches(loader: DataLoader, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Iterate the loader; a bad image stops the shard with its path on the message's first
    line (a worker's error arrives wrapped in its traceback text)."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except BadImageError as exc:
            cause = str(exc).strip().splitlines()[-1].split("BadImageError: ", 1)[-1]
            break
        yield batch
    # Stop the worker processes now: the worker's error sits in a reference cycle with the
    # iterator, so without this they would linger until the garbage collector runs.
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    del iterator
    raise BadImageError(f"Teacher pass of samples [{start}, {stop}) stopped: {cause}")


def _check_request(
    dataset: Any, manifest: Manifest, views: list[int], start: int, stop: int, batch_size: int
) -> None:
    check_output_spec(manifest.format, manifest.k, manifest.temperatures, None)
    view_info = manifest.views
    if not 0 <= start < stop <= len(dataset):
        raise ConfigError(
            f"Sample range [{start}, {stop}) is empty or outside the dataset's "
            f"{len(dataset)} samples."
        )
    limit = 1 if view_info.mode == "eval" else int(view_info.num_views)
    if not views or any(not 0 <= v < limit for v in views) or len(set(views)) != len(views):
        raise ConfigError(
            f"Views {views} are not distinct indices in [0, {limit}) for a {view_info.mode!r} "
            f"cache with {view_info.num_views} view(s)."
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")


class _Collector:
    """Per-sample view metadata in numpy, teacher records on the device, joined at the end."""

    def __init__(self, dataset: Any, num_views: int, start: int, stop: int) -> None:
        n = stop - start
        self.dataset, self.nv, self.start, self.n = dataset, num_views, start, n
        self.labels = torch.as_tensor(np.asarray(dataset.labels[start:stop], dtype=np.int64))
        self.crop = np.zeros((n, num_views, 4), np.int32)
        self.flip = np.zeros((n, num_views), np.uint8)
        self.hw = np.zeros((n, 2), np.int32)
        self.bad = np.zeros(n, bool)
        self.num_classes: int | None = None
        self.rows: list[np.ndarray] = []
        self.parts: list[dict[str, torch.Tensor]] = []
        self.finite: list[torch.Tensor] = []

    def add_views(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """Store a batch's crops, flips, sizes and bad flags; return its good rows [b]."""
        j = batch["index"].numpy() - self.start
        self.crop[j] = batch["crop"].numpy()
        self.flip[j] = batch["flip"].numpy()
        self.hw[j] = batch["hw"].numpy()
        self.bad[j] = batch["bad"].numpy()
        return j[~batch["bad"].numpy()]

    def add_records(self, rows: np.ndarray, records: dict, finite: torch.Tensor) -> None:
        """Keep one batch's device records ([len(rows) * nV, ...], sample-major)."""
        self.rows.append(rows)
        self.parts.append(records)
        self.finite.append(finite)

    def finish(self, views: list[int], fmt: str, k: int, temperatures: Sequence[float]) -> dict:
        """Check finiteness, copy to the host once, split by view, fill bad rows."""
        stop = self.start + self.n
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)
        merged = {}
        if self.parts:  # else every image was bad: only filler rows
            finite = torch.cat(self.finite).cpu().numpy().reshape(-1, self.nv).all(axis=1)
            if not finite.all():
                broken = [self.dataset.keys[self.start + int(r)] for r in rows[~finite]]
                raise NonFiniteTeacherError(
                    f"The teacher returned NaN/Inf logits for {len(broken)} sample(s) in "
                    f"[{self.start}, {stop}): {broken[:10]}. Check the model and weights; with "
                    "amp='fp16' try amp='bf16' or 'off'."
                )
            merged = {
                name: torch.cat([p[name] for p in self.parts]).cpu().numpy()
                for name in self.parts[0]
            }
        filler = placeholder_records(1, self.num_classes, fmt, k, temperatures)
        out = {}
        for a, v in enumerate(views):
            rec = {}
            for name, values in filler.items():
                column = np.repeat(values.numpy(), self.n, axis=0)
                if name in merged:
                    good = merged[name]
                    column[rows] = good.reshape(len(rows), self.nv, *good.shape[1:])[:, a]
                rec[name] = column
            if "topk_idx" in rec:
                rec["topk_idx"] = rec["topk_idx"].astype(np.int32)
            rec["crop"] = np.ascontiguousarray(self.crop[:, a])
            rec["flip"] = np.ascontiguousarray(self.flip[:, a])
            rec["bad"] = self.bad.copy()
            rec["hw"] = self.hw.copy()
            out[v] = rec
        if self.bad.any():
            logger.warning(
                "Samples [%d, %d): %d bad image(s) recorded as bad",
                self.start,
                stop,
                self.bad.sum(),
            )
        return out
