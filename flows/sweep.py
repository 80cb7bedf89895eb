"""The `sweep` flow: one student run per grid point, all from one cache, no teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.artifacts import Progress, artifact_key, png_markdown, publish_markdown, publish_table
from flows.events import emit_sweep_finished
from flows.train_student import train_run
from pld_pipeline.configs.loading import get_dotted
from pld_pipeline.configs.train import SweepConfig, TrainConfig, expand_grid
from pld_pipeline.reports.sweep_report import (
    TABLE_COLUMNS,
    format_table,
    result_row,
    write_sweep_reports,
)
from pld_pipeline.student.data.target_fidelity import warn_sweep
from pld_pipeline.student.run.run_dir import RunDir


@flow(name="sweep-runs")
def run_points(points: list[tuple[str, TrainConfig]]) -> dict[str, dict[str, Any]]:
    """Train the given grid points as concurrent tasks (the runner sets the limit)."""
    progress = Progress("sweep-progress", total=len(points), description="student runs finished")
    futures = {train_run.submit(config, name): name for name, config in points}
    results = {}
    for future in as_completed(list(futures)):
        results[futures[future]] = future.result()
        progress.advance(note=f"{len(results)}/{len(points)} runs")
    return results


@flow(name="sweep")
def sweep(config: SweepConfig) -> list[dict[str, Any]]:
    """Train one student per point of a grid (loss, temperature, student, seed, K, ...).

    Every run reads the same teacher cache, so a sweep never pays for the teacher. Runs
    go to sweep_dir/<run name>; finished runs (result.json present) are skipped, so an
    interrupted sweep resumes. Runs that differ only in `seed` form a group; per group the
    sweep reports n, mean, sample std, min and max of best top-1, final top-1, NLL and ECE
    (summary.json, summary.md, a markdown artifact), plots final top-1 and ECE with std
    error bars (sweep_dir/summary.png), writes one row per run to results.json, and emits
    `pld.sweep.finished`. On CUDA each run holds a slot of the `gpu` concurrency limit
    while it trains.
    """
    logger = get_run_logger()
    # Every point resumes from its checkpoint if it has one: that is how a sweep resumes.
    points = [(name, run.model_copy(update={"resume": True})) for name, run in expand_grid(config)]
    sweep_dir = Path(config.sweep_dir)
    finished, todo = {}, []
    for name, run in points:
        result = RunDir(run.run_dir).finished_result(run)
        if result is not None:
            finished[name] = result
        else:
            todo.append((name, run))
    logger.info("Sweep %s: %d runs, %d finished before, %d to train (max %d at once)",
                sweep_dir, len(points), len(finished), len(todo), config.max_parallel)  # fmt: skip
    warn_sweep(todo)  # one warning per grid point whose targets are far from the teacher
    trained = {}
    if todo:
        runner = ThreadPoolTaskRunner(max_workers=config.max_parallel)
        trained = run_points.with_options(task_runner=runner)(todo)
    rows = []
    for name, run in points:
        result = trained.get(name) or finished[name]
        rows.append(_grid_values(config, run) | result_row(name, result, name in finished))
    summary_md, plot = write_sweep_reports(rows, list(config.grid), sweep_dir)
    publish_table("sweep-results", rows, description=f"Sweep {sweep_dir}: one row per run")
    publish_markdown("sweep-summary", summary_md,
                     description=f"Sweep {sweep_dir}: runs grouped over seeds, mean ± std")  # fmt: skip
    publish_markdown(
        artifact_key("sweep-plot"), png_markdown(plot, "Final top-1 and ECE, mean ± std over seeds"),
        description=f"Sweep {sweep_dir}",
    )  # fmt: skip
    logger.info("Sweep results:\n%s", format_table(rows, TABLE_COLUMNS))
    logger.info("Over seeds:\n%s", summary_md)
    emit_sweep_finished(config, rows)
    return rows


def _grid_values(config: SweepConfig, run: TrainConfig) -> dict[str, Any]:
    """The grid's own fields for one run (so the table shows what varied)."""
    data = run.model_dump()
    return {path: get_dotted(data, path) for path in config.grid}
