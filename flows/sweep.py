"""The `sweep` flow: one student run per grid point, all from one cache, no teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.artifacts import Progress, artifact_key, png_markdown, publish_markdown, publish_table
from flows.events import emit_sweep_finished
from flows.train_student import result_row, train_run
from pld_pipeline.configs.train import SweepConfig, TrainConfig, expand_grid
from pld_pipeline.run_dir import RunDir
from pld_pipeline.sweep_report import format_table, plot_top1

TABLE_COLUMNS = (
    "run", "loss", "temperature", "k", "best_top1", "final_top5", "dropped_weight", "time_s",
    "status",
)  # fmt: skip


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
    interrupted sweep resumes. Ends with a results table, a plot of top-1 per loss and
    temperature (sweep_dir/top1.png), and results.json, and emits `pld.sweep.finished`.
    On CUDA each run holds a slot of the `gpu` concurrency limit while it trains.
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
                sweep_dir, len(points), len(finished), len(todo), config.max_parallel)
    trained = {}
    if todo:
        runner = ThreadPoolTaskRunner(max_workers=config.max_parallel)
        trained = run_points.with_options(task_runner=runner)(todo)
    rows = []
    for name, run in points:
        result = trained.get(name) or finished[name]
        rows.append(_grid_values(config, run) | result_row(name, result, name in finished))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "results.json").write_text(json.dumps(rows, indent=2))
    plot = plot_top1(rows, sweep_dir / "top1.png", title=f"Sweep {sweep_dir.name}: best top-1")
    publish_table("sweep-results", rows, description=f"Sweep {sweep_dir}: one row per run")
    publish_markdown(
        artifact_key("sweep-plot"), png_markdown(plot, "Top-1 per loss and temperature"),
        description=f"Sweep {sweep_dir}",
    )  # fmt: skip
    logger.info("Sweep results:\n%s", format_table(rows, TABLE_COLUMNS))
    emit_sweep_finished(config, rows)
    return rows


def _grid_values(config: SweepConfig, run: TrainConfig) -> dict[str, Any]:
    """The grid's own fields for one run (so the table shows what varied)."""
    data = run.model_dump()
    values = {}
    for path in config.grid:
        node: Any = data
        for part in path.split("."):
            node = node[part]
        values[path] = node
    return values
