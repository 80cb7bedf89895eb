"""The `cache-teacher` flow: run the teacher once over a dataset and fill the Zarr logit cache."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.runtime import flow_run

from flows.artifacts import Progress, artifact_key, publish_table
from flows.runners import gpu_restriction, make_task_runner
from pld_pipeline import cache_build
from pld_pipeline.configs.cache import CacheConfig


def _retry_transient(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's hook signature)
    """Retry I/O hiccups and worker losses, not deterministic input errors."""
    try:
        state.result()
    except cache_build.DETERMINISTIC_ERRORS:
        return False
    except Exception:  # noqa: BLE001
        return True
    return False


@task(name="plan-shards")
def plan_shards(config: CacheConfig, producer: str) -> cache_build.CachePlan:
    """Validate the dataset, create or reopen the cache, list the (view, shard) still to do."""
    plan = cache_build.prepare_cache(config, producer=producer)
    get_run_logger().info(
        "Cache %s: %d views x %d shards, %d done, %d to compute",
        plan.path, plan.num_views, plan.num_shards, plan.num_done, len(plan.todo),
    )
    return plan


@task(
    name="cache-shard",
    task_run_name="shard-{shard}-views-{views}",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_transient,
)
def cache_shard(config: CacheConfig, shard: int, views: list[int]) -> dict[str, Any]:
    """Teacher outputs of one shard for its missing views, each written with its done bit last."""
    return cache_build.build_shard(config, shard, views).as_dict()


@task(name="finalize-cache")
def finalize(config: CacheConfig) -> dict[str, Any]:
    """Check every done bit, record bad samples, compute teacher top-1, tail mass, bytes/record."""
    return cache_build.finalize_cache(config).as_dict()


@task(name="replay-check")
def replay_check(config: CacheConfig) -> dict[str, Any]:
    """Recompute the teacher on random cached records and compare log-probs."""
    return cache_build.replay_check(config).as_dict()


@flow(name="cache-shards")
def run_shards(config: CacheConfig, tasks: list[tuple[int, list[int]]]) -> list[dict[str, Any]]:
    """Map the shard tasks over the configured task runner, with a progress artifact."""
    logger = get_run_logger()
    progress = Progress(
        artifact_key("cache-progress", config.output.rstrip("/").rsplit("/", 1)[-1]),
        total=len(tasks),
        description=f"Teacher pass shards written to {config.output}",
    )
    with gpu_restriction(config.task_runner, config.gpus_per_task):
        futures = [cache_shard.submit(config, shard, views) for shard, views in tasks]
    results = []
    for future in as_completed(futures):
        outcome = future.result()
        results.append(outcome)
        progress.advance(note=f"{len(results)}/{len(tasks)} shards")
        logger.info(
            "shard %d views %s: %d records in %.1fs (%d/%d shards)",
            outcome["shard"], outcome["written"], outcome["records"], outcome["seconds"],
            len(results), len(tasks),
        )
    return results


@flow(name="cache-teacher")
def cache_teacher(config: CacheConfig) -> dict[str, Any]:
    """Run the teacher once over an image folder and cache its outputs for every view.

    Creates (or resumes) a Zarr cache at `output`: top-K log-probs or full logits, the
    logsumexp at every temperature, the true-class logit, and each view's crop and flip,
    so students can replay the exact views later without the teacher. Shards already
    marked done are skipped, so rerunning after a crash resumes. Ends with a completeness
    check, teacher statistics and a replay check against a fresh teacher forward. Labels are
    the positions of the class folders in `classes` (the teacher's class list); when the
    teacher's top-1 rarely matches them the cache is kept but flagged, and the run fails.
    """
    logger = get_run_logger()
    producer = f"prefect flow run {flow_run.get_id()} ({flow_run.get_name()})"
    plan = plan_shards(config, producer)
    if plan.todo:
        runner = make_task_runner(
            config.task_runner, config.max_workers, config.dask_workers, config.dask_address,
            gpus_per_worker=config.gpus_per_task,
        )
        run_shards.with_options(task_runner=runner)(config, plan.shard_tasks())
    else:
        logger.info("Every shard is already done; nothing to compute.")
    report = finalize(config)
    check = replay_check(config)
    report["replay_check"] = check
    publish_table(
        "cache-stats", cache_build.stats_rows(report), cache_build.stats_description(report)
    )
    cache_build.require_label_agreement(report)  # a flagged cache is kept, the run fails
    return report
