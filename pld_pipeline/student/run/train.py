"""Training a student from the logit cache: `fit` is `build_run` plus the epoch loop.

`build_run` (student/run.py) assembles the run: data (cache checked against the dataset and
config), model, criterion, optimizer, schedule, loaders, resume state. `fit` runs its epochs;
`train_one_epoch`, `train_step` and `evaluate` are plain functions. The teacher is never
built unless `online_teacher` asks for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.errors import BadImageError, DivergedError
from pld_pipeline.losses import no_host_sync
from pld_pipeline.student.data.cached_dataset import gather_targets
from pld_pipeline.student.run import eval_metrics
from pld_pipeline.student.run._epoch_totals import EpochTotals
from pld_pipeline.student.run.build import Step, build_run
from pld_pipeline.student.run.ddp import DistContext
from pld_pipeline.student.run.placement import Placement
from pld_pipeline.student.run.result import RunResult, build_result

__all__ = ["DivergedError", "Step", "evaluate", "fit", "train_one_epoch", "train_step"]

logger = logging.getLogger(__name__)
ProgressCallback = Callable[[dict[str, Any]], None]
SUMMARY_KEYS = (
    "train_loss", "train_top1", "val_nll", "val_top1", "val_top5", "val_ece", "epoch_time_s",
)  # fmt: skip


def fit(
    config: TrainConfig,
    progress_callback: ProgressCallback | None = None,
    dist_context: DistContext | None = None,
) -> RunResult:
    """Train one student as `config` says and return its result.

    Args:
        config: the run.
        progress_callback: called on the main rank after every epoch with that epoch's
            metrics record (how a flow reports progress without this package importing Prefect).
        dist_context: this process's place in a DDP job (default: a single process).

    Returns:
        RunResult (also written to run_dir/result.json).

    Raises:
        PLDError: the errors of `build_run` (and storage.CacheError), before the first step.
        DivergedError: every loss of an epoch was non-finite.
    """
    run = build_run(config, dist_context)
    ctx, place = run.ctx, run.placement
    for epoch in range(run.start_epoch, config.epochs):
        epoch_slabs = run.slabs.get(epoch)
        totals = None
        if run.in_epoch is not None and int(run.in_epoch["epoch"]) == epoch:
            totals = EpochTotals.from_state(run.in_epoch["totals"], place.device, ctx.is_main)
        batches = run.train_batches(epoch, epoch_slabs, totals.steps if totals else 0)
        if epoch + 1 < config.epochs:
            run.slabs.prefetch(epoch + 1)
        view_ids = run.slabs.views_of(epoch)
        record: dict[str, Any] = {"epoch": epoch, "view": view_ids[0], "views": list(view_ids)}

        def save_mid_epoch(partial: EpochTotals, epoch: int = epoch) -> None:
            global_sums = partial.reduced(ctx)  # every rank takes part in the sum
            if ctx.is_main:
                run.save_state(epoch - 1, False, in_epoch={"epoch": epoch, "totals": global_sums})

        record.update(
            train_one_epoch(
                run.step,
                batches,
                epoch_slabs,
                epoch,
                config.log_every,
                ctx,
                totals,
                config.checkpoint_every,
                save_mid_epoch,
                run.inputs.train_images.keys,
            )  # fmt: skip
        )
        last = epoch + 1 == config.epochs
        if run.loaders.val is not None and ((epoch + 1) % config.eval_every == 0 or last):
            val_keys = run.inputs.val_images.keys if run.inputs.val_images is not None else None
            record.update(evaluate(run.model, run.loaders.val, place, ctx, val_keys))
        top1 = record.get("val_top1")
        best = run.resume.best
        record["is_best"] = top1 is not None and (best["top1"] is None or top1 > best["top1"])
        if record["is_best"]:
            run.resume.best = {"top1": top1, "epoch": epoch}
        run.history.append(record)
        if ctx.is_main:
            run.run_dir.metrics.append(record)
            run.save_state(epoch, record["is_best"])
            summary = " ".join(f"{k}={record[k]:.4g}" for k in SUMMARY_KEYS if k in record)
            logger.info("epoch %d/%d %s", epoch + 1, config.epochs, summary)
            if progress_callback is not None:
                progress_callback(dict(record))
        ctx.barrier()

    result = build_result(
        config, run.plan, run.criterion.params, ctx.world_size, run.resume.best, run.history
    )
    if ctx.is_main:
        run.run_dir.write_result(result.to_dict())
    return result


def train_one_epoch(
    step: Step,
    batches: Iterable,
    slabs: Any,
    epoch: int,
    log_every: int,
    ctx: DistContext,
    totals: EpochTotals | None = None,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[EpochTotals], None] | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One pass over the epoch's batches; targets gathered from `slabs` (or the live teacher).

    The running sums stay on the device: nothing is read back to the host except every
    `log_every` steps (the finiteness check and the progress log) and at the end.

    Args:
        step: model, loss, optimizer and friends.
        batches: `ViewBatch`es (uint8 images [B, 3, S, S], labels, indices, view slots[,
            teacher images]).
        slabs: the epoch's storage.ViewSlab per view slot (None without a cache).
        epoch: the epoch number, for progress logs.
        log_every: log progress every this many steps.
        ctx: sums over DDP ranks.
        totals: the sums of the steps already done this epoch (a mid-epoch resume).
        checkpoint_every: call `on_checkpoint(totals)` every this many steps.
        on_checkpoint: saves a mid-epoch checkpoint from the running sums.
        keys: the training images' keys, to name unreadable images in warnings.

    Returns:
        train_loss, train_top1 (%), lr, steps, samples, epoch_time_s, data_time_s,
        target_time_s (target gather, or teacher forward in online mode), target_share,
        images_per_s (samples per second), dropped_weight (PLD with compact targets, else
        None), nonfinite_steps, unreadable_images (images left out of this epoch because
        they could not be read; each one is logged as a warning).

    Raises:
        DivergedError: every loss so far non-finite.
        BadImageError: under DDP, a batch with no readable image (one rank cannot skip a
            step alone).
    """
    step.model.train()
    dev = step.placement.device
    totals = totals if totals is not None else EpochTotals.zeros(dev)
    started = time.perf_counter()
    elapsed_before = totals.elapsed_s
    t_data = started
    for batch in batches:
        totals.data_time_s += time.perf_counter() - t_data
        totals.unreadable += warn_unreadable(batch, f"epoch {epoch}", keys)
        if len(batch.index) == 0:  # every image of the batch was unreadable
            if ctx.enabled:
                raise BadImageError(
                    f"Every image of a training batch on rank {ctx.rank} was unreadable in "
                    f"epoch {epoch} (see the warnings above); a DDP step cannot be skipped on "
                    "one rank alone. Check the dataset's storage and resume the run."
                )
            totals.steps += 1  # a step of nothing: the loader's position stays resumable
            t_data = time.perf_counter()
            continue
        loss, logits, labels, seconds = train_step(step, batch, slabs)
        totals.add(loss, logits, labels, getattr(step.criterion, "last_dropped", None))
        totals.target_time_s += seconds
        if totals.steps % log_every == 0:
            # The only read-backs of the loop: every log_every steps.
            _check_finite(int(totals.nonfinite), totals.steps, epoch)
            if ctx.is_main:
                lr = step.optimizer.param_groups[0]["lr"]
                mean = float(totals.loss_sum) / max(totals.samples, 1)
                logger.info("epoch %d step %d loss %.4f lr %.3g", epoch, totals.steps, mean, lr)
        if checkpoint_every and on_checkpoint and totals.steps % checkpoint_every == 0:
            totals.elapsed_s = elapsed_before + time.perf_counter() - started
            on_checkpoint(totals)
        t_data = time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    epoch_time = elapsed_before + time.perf_counter() - started
    _check_finite(int(totals.nonfinite), totals.steps, epoch)
    loss_total, correct_total, n, drop_sum, drop_n, unreadable = ctx.sum(
        [float(totals.loss_sum), float(totals.correct), totals.samples,
         float(totals.dropped_sum), float(totals.dropped_n), totals.unreadable], dev,
    )  # fmt: skip
    return {
        "train_loss": loss_total / max(n, 1),
        "train_top1": 100.0 * correct_total / max(n, 1),
        "lr": step.optimizer.param_groups[0]["lr"],
        "steps": totals.steps,
        "samples": int(n),
        "epoch_time_s": epoch_time,
        "data_time_s": totals.data_time_s,
        "target_time_s": totals.target_time_s,
        "target_share": totals.target_time_s / epoch_time if epoch_time > 0 else 0.0,
        "images_per_s": n / epoch_time if epoch_time > 0 else 0.0,
        "dropped_weight": drop_sum / drop_n if drop_n else None,
        "nonfinite_steps": int(totals.nonfinite),
        "unreadable_images": int(unreadable),
    }


def warn_unreadable(batch: Any, where: str, keys: Sequence[str] | None) -> int:
    """Log each image the batch left out because it could not be read; return their count.

    An image the teacher pass decoded can become unreadable during a long run (deleted,
    permissions changed, damaged on disk): it is skipped, named and counted, never fatal.
    """
    skipped = getattr(batch, "unreadable", ())
    for image in skipped:
        key = keys[image.index] if keys is not None else image.key
        logger.warning("%s: skipping unreadable image %s: %s", where, key, image.reason)
    return len(skipped)


def train_step(
    step: Step, batch: Any, slabs: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One optimisation step on one batch, with no read-back to the host.

    The loss runs inside `losses.no_host_sync()`: its value checks were done once before
    the first step (`run.preflight_loss`) and on each slab as it loaded
    (`cache_check.check_slab_values`), so a GPU never waits for the host here.

    Args:
        step: model, loss, optimizer and friends.
        batch: a `ViewBatch` (uint8 images [B, 3, S, S], labels [B], indices [B], view slots
            [B][, teacher images]); images may already be on the device (GPU decoding).
        slabs: the epoch's storage.ViewSlab per view slot (targets are gathered from them by
            index and slot), None without a cache, or unused in online mode (the teacher
            computes the targets from the teacher images).

    Returns:
        (loss [], logits [B, C], labels [B] on the device, seconds spent getting the targets).
    """
    dev = step.placement.device
    labels = batch.labels.to(dev, non_blocking=True)
    started = time.perf_counter()
    if slabs is None:  # no cache: plain supervised training
        targets = None
    elif step.teacher is None:
        index, slot = batch.index.numpy(), batch.slot.numpy()
        targets = gather_targets(slabs, index, step.form, dev, slot=slot)
    else:
        targets = step.teacher.targets(batch.teacher_images, labels)
    target_seconds = time.perf_counter() - started
    x = step.placement.inputs(batch.images)
    with no_host_sync():
        with step.placement.autocast():
            logits = step.model(x)
        loss = step.criterion(logits.float(), targets, labels)
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        if step.clip_grad_norm is not None:
            step.scaler.unscale_(step.optimizer)
            nn.utils.clip_grad_norm_(step.model.parameters(), step.clip_grad_norm)
        step.scaler.step(step.optimizer)
        step.scaler.update()
        step.scheduler.step()
    return loss, logits, labels, target_seconds


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    placement: Placement,
    ctx: DistContext,
    keys: Sequence[str] | None = None,
) -> dict[str, float]:
    """Top-1, top-5, NLL, ECE (15 bins) and mean confidence of `model` on `loader`'s eval views.

    Each rank evaluates its own share (no padding); the per-batch sums stay on the device
    and are reduced over ranks once. Metric definitions: `pld_pipeline.student.run.eval_metrics`.
    An image that cannot be read is left out (logged, counted in val_unreadable_images).

    Returns:
        val_top1, val_top5, val_ece, val_confidence (%), val_nll (nats), val_samples,
        val_unreadable_images.
    """
    model.eval()
    sums = eval_metrics.new_sums(device=placement.device)
    unreadable = 0
    for batch in loader:
        unreadable += warn_unreadable(batch, "validation", keys)
        if len(batch.index) == 0:
            continue
        labels = batch.labels.to(placement.device, non_blocking=True)
        with placement.autocast():
            logits = model(placement.inputs(batch.images)).float()
        eval_metrics.add_batch(sums, logits, labels)
    totals = ctx.sum([*sums.tolist(), unreadable], placement.device)
    metrics = eval_metrics.finish(totals[:-1])
    return {f"val_{name}": value for name, value in metrics.items()} | {
        "val_unreadable_images": int(totals[-1])
    }


def _check_finite(nonfinite: int, steps: int, epoch: int) -> None:
    if steps and nonfinite == steps:
        raise DivergedError(
            f"Training diverged in epoch {epoch}: all {steps} losses so far are NaN or infinite; "
            "lower optim.lr, add optim.clip_grad_norm, or use amp='bf16' instead of 'fp16'."
        )
