"""The `train-student` flow: one student trained from the cache, never the teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.artifacts import Progress, artifact_key, publish_table
from flows.concurrency import gpu_slot
from flows.events import emit_run_finished
from flows.timeouts import run_time_limit
from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.reports.sweep_report import result_row
from pld_pipeline.student.run.train import fit


@task(name="train-student-run", task_run_name="{name}")
def train_run(config: TrainConfig, name: str) -> dict[str, Any]:
    """Train one student; per-epoch metrics go to the log and a progress artifact.

    On CUDA the run holds a slot of `gpu_limit` while it trains (unless its flow already
    holds one for it); `timeout_s` counts from then. Emits `pld.run.finished` at the end.
    """
    logger = get_run_logger()
    progress = Progress(
        artifact_key("train-progress", name), total=config.epochs,
        description=f"{name}: epochs of {config.loss.name} on {config.student.name}",
    )  # fmt: skip

    def on_epoch(record: dict[str, Any]) -> None:
        done = int(record["epoch"]) + 1
        progress.set(done, note=f"{name}: epoch {done}/{config.epochs}")
        logger.info(
            "%s epoch %d/%d: train loss %.4f, val top-1 %s, top-5 %s",
            name, done, config.epochs, record.get("train_loss", float("nan")),
            record.get("val_top1"), record.get("val_top5"),
        )  # fmt: skip

    with (
        gpu_slot(config.gpu_limit, config.device, f"Student run {name!r}"),
        run_time_limit(config.timeout_s, name, config.run_dir),
    ):
        result = fit(config, progress_callback=on_epoch).to_dict()
    emit_run_finished(config, name, result)
    return result


@flow(name="train-student")
def train_student(config: TrainConfig) -> dict[str, Any]:
    """Train one student network from a teacher logit cache.

    Validates the cache against the dataset and the run before the first step, replays
    each epoch's cached views at the student's resolution, and trains with the chosen
    loss (ce, kd, dist, dkd or pld). Writes config, metrics.jsonl, checkpoints and
    result.json to run_dir; with resume=true an interrupted run continues from its last
    checkpoint. The teacher is never loaded (unless online_teacher asks for it).
    """
    name = Path(config.run_dir).name or "run"
    # The slot is taken around the task, so a run waiting for a GPU has not started its
    # task yet and the task's start and end times are the time it held the GPU.
    with gpu_slot(config.gpu_limit, config.device, f"Student run {name!r}"):
        result = train_run(config, name)
    publish_table(
        artifact_key("student-result", name),
        [result_row(name, result)],
        description=f"Student run {config.run_dir}",
    )
    return result
