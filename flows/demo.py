"""The `demo` flow: Fashion-MNIST -> teacher -> cache -> student sweep, end to end on CPU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.artifacts import publish_table
from flows.cache_teacher import cache_teacher
from flows.sweep import sweep
from flows.train_student import train_run
from pld_pipeline.configs.demo import DemoConfig
from pld_pipeline.demo import plan as demo_plan
from pld_pipeline.demo.fashion_mnist import write_image_folder
from pld_pipeline.reports.sweep_report import format_table
from pld_pipeline.student.run.run_dir import RunDir

__all__ = ["DemoConfig", "demo"]


@task(name="write-fashion-mnist")
def write_data(config: DemoConfig) -> dict[str, str]:
    """Write the train and val splits as PNG folders (skipped when already complete)."""
    data = Path(config.workdir) / "data" / "fashion-mnist"
    source = Path(config.source)
    write_image_folder(data, "train", config.train_per_class, config.seed, source)
    write_image_folder(data, "val", config.val_per_class, config.seed, source)
    return {"root": str(data)}


@flow(name="demo")
def demo(config: DemoConfig) -> dict[str, Any]:
    """The whole pipeline on real Fashion-MNIST, on CPU, with no setup.

    Writes the images as an ImageNet-layout folder, trains a small ResNet teacher, caches
    its outputs for several replayable views, then trains the same tiny student with CE,
    KD, DIST, DKD and PLD from the cache alone, and prints the results table. Everything
    goes under `workdir`; a rerun reuses the finished teacher, cache and student runs.
    """
    logger = get_run_logger()
    times: dict[str, float] = {}

    started = time.perf_counter()
    data_root = write_data(config)["root"]
    times["data"] = time.perf_counter() - started

    started = time.perf_counter()
    teacher_run = demo_plan.teacher_train_config(config, data_root)
    teacher = RunDir(teacher_run.run_dir).finished_result(teacher_run)
    if teacher is not None:
        logger.info("Teacher already trained in %s; reusing it.", teacher_run.run_dir)
    else:
        teacher = train_run(teacher_run, "teacher")
    times["teacher"] = time.perf_counter() - started

    started = time.perf_counter()
    cache_report = cache_teacher(demo_plan.cache_config(config, data_root))
    times["cache"] = time.perf_counter() - started

    started = time.perf_counter()
    rows = sweep(demo_plan.sweep_config(config, data_root))
    times["sweep"] = time.perf_counter() - started

    summary = demo_plan.summary_rows(rows, teacher, cache_report, times)
    publish_table("demo-summary", summary, description="Demo: top-1 per loss, teacher, timings")
    table = format_table(summary, demo_plan.SUMMARY_COLUMNS)
    logger.info("Demo results (workdir %s):\n%s", config.workdir, table)
    print(table)
    return {"summary": summary, "times": times}
