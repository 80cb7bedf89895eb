"""The `cache-teacher` flow: run the teacher once over a dataset and fill the Zarr logit cache."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.artifacts import Progress, artifact_key, publish_table
from flows.concurrency import gpu_slot
from flows.events import cache_failed_hook, emit_cache_finalized
from flows.timeouts import shard_time_limit
from pld_pipeline.configs.cache import CacheConfig, resolve_output
from pld_pipeline.teacher import cache_build, cache_report
from pld_pipeline.teacher import replay_check as replay_checking
from pld_pipeline.teacher.dask_cluster import PassCluster, announce_shard, gpu_restriction

EVENTS_EVERY_S = 2.0  # how often the wait for shards stops to log the cluster's events


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
    get_run_logger().info("Cache %s: %d views x %d shards, %d done, %d to compute", plan.path,
                          plan.num_views, plan.num_shards, plan.num_done, len(plan.todo))  # fmt: skip
    return plan


@task(name="cache-shard", task_run_name="shard-{shard}-views-{views}", retries=2,
      retry_delay_seconds=5, retry_condition_fn=_retry_transient)  # fmt: skip
def cache_shard(config: CacheConfig, shard: int, views: list[int]) -> dict[str, Any]:
    """Teacher outputs of one shard for its missing views, each written with its done bit last.

    On CUDA it first takes its GPU slot(s) of `gpu_limit`; then `shard_timeout_s` runs.
    """
    announce_shard(shard)
    slots = max(1, config.gpus_per_task)
    with (
        gpu_slot(config.gpu_limit, config.device, f"Shard {shard}", slots=slots),
        shard_time_limit(config.shard_timeout_s, shard, views, config.output),
    ):
        return cache_build.build_shard(config, shard, views).as_dict()


@task(name="finalize-cache")
def finalize(config: CacheConfig) -> dict[str, Any]:
    """Check every done bit, record bad samples, compute teacher top-1, tail mass, bytes/record."""
    return cache_report.finalize_cache(config).as_dict()


@task(name="replay-check")
def replay_check(config: CacheConfig) -> dict[str, Any]:
    """Recompute the teacher on random cached records and compare log-probs."""
    with gpu_slot(config.gpu_limit, config.device, "The replay check"):
        return replay_checking.replay_check(config).as_dict()


@flow(name="cache-shards")
def run_shards(
    config: CacheConfig, tasks: list[tuple[int, list[int]]], dask_address: str | None = None
) -> list[dict[str, Any]]:
    """Map the shard tasks over the configured task runner, with a progress artifact.

    On Dask the scheduler reruns the shards of a lost worker (logged here with the
    worker's name) and fails those that wait `lost_workers_timeout` without one; every
    worker's imports are checked before it runs a shard.
    """
    logger = get_run_logger()
    progress = Progress(
        artifact_key("cache-progress", config.output.rstrip("/").rsplit("/", 1)[-1]),
        total=len(tasks),
        description=f"Teacher pass shards written to {config.output}",
    )
    cluster = PassCluster(dask_address, config.lost_workers_timeout) if dask_address else None
    results: list[dict[str, Any]] = []
    with cluster or nullcontext():
        if cluster is not None:
            logger.info("%d Dask worker(s) at %s, imports checked", cluster.most_workers,
                        dask_address)  # fmt: skip
        with gpu_restriction(config.gpus_per_task if dask_address else 0):
            futures = {cache_shard.submit(config, shard, views): shard for shard, views in tasks}
        for outcome in _outcomes(futures, cluster, logger):
            results.append(outcome)
            progress.advance(note=f"{len(results)}/{len(tasks)} shards")
            logger.info(
                "shard %d views %s: %d records in %.1fs (%d/%d shards)",
                outcome["shard"], outcome["written"], outcome["records"], outcome["seconds"],
                len(results), len(tasks),
            )  # fmt: skip
    return results


def _outcomes(
    futures: dict[PrefectFuture, int], cluster: PassCluster | None, logger: Any
) -> Iterator[dict[str, Any]]:
    """Each shard's outcome as it finishes; the first failed shard stops the pass with its
    error (on Dask: in the pass's terms, see `PassCluster.outcome`).

    One done-callback per future feeds a queue (`prefect.futures.wait` in a loop would add
    one per future per call: millions over a week-long pass); between shards, every
    `EVENTS_EVERY_S` the cluster's events are logged.
    """
    finished: queue.SimpleQueue[PrefectFuture] = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    unfinished = set(futures)
    while unfinished:
        try:
            future = finished.get(timeout=EVENTS_EVERY_S)
        except queue.Empty:
            future = None
        if cluster is not None:
            cluster.report_events(logger, {futures[f] for f in unfinished})
        if future is None:
            continue
        unfinished.discard(future)
        yield future.result() if cluster is None else cluster.outcome(future, futures[future])


@flow(name="cache-teacher", on_failure=[cache_failed_hook], on_crashed=[cache_failed_hook])
def cache_teacher(config: CacheConfig) -> dict[str, Any]:
    """Run the teacher once over an image folder and cache its outputs for every view.

    Creates (or resumes) a Zarr cache at `output`: top-K log-probs or full logits, the
    logsumexp at every temperature, the true-class logit, and each view's crop and flip,
    so students can replay the exact views later without the teacher. Shards already
    marked done are skipped, so rerunning after a crash resumes. Ends with a completeness
    check, teacher statistics and a replay check against a fresh teacher forward, then
    emits a `pld.cache.finalized` event (a failed pass emits `pld.cache.failed`). Labels are
    the positions of the class folders in `classes` (the teacher's class list); when the
    teacher's top-1 rarely matches them the cache is kept but flagged, and the run fails.
    `{date}` in `output` becomes the run's scheduled date: one new cache per scheduled pass.
    """
    logger = get_run_logger()
    config = config.model_copy(
        update={"output": resolve_output(config.output, flow_run.get_scheduled_start_time())}
    )
    producer = f"prefect flow run {flow_run.get_id()} ({flow_run.get_name()})"
    plan = plan_shards(config, producer)
    if plan.todo:
        with shard_task_runner(config) as (runner, address):
            run_shards.with_options(task_runner=runner)(config, plan.shard_tasks(), address)
    else:
        logger.info("Every shard is already done; nothing to compute.")
    report = finalize(config)
    report["replay_check"] = replay_check(config)
    publish_table(
        "cache-stats", cache_report.stats_rows(report), cache_report.stats_description(report)
    )
    cache_report.require_label_agreement(report)  # a flagged cache is kept, the run fails
    emit_cache_finalized(config, report)
    return report


@contextmanager
def shard_task_runner(config: CacheConfig) -> Iterator[tuple[TaskRunner, str | None]]:
    """The runner for a pass's shard tasks, and the Dask scheduler address (None: threads).

    Threads run in this process. Dask runs on an existing scheduler (`dask_address`),
    reached first with a bound (Prefect's own client would fail with a bare connection
    traceback), or on a local cluster of `dask_workers` single-threaded worker processes.
    Spawned workers report to this process's Prefect API (`PREFECT_API_URL`): else each
    starts a temporary server of its own (5-13 s) and its task runs miss the UI.
    """
    if config.task_runner == "threads":
        yield ThreadPoolTaskRunner(max_workers=max(1, config.max_workers)), None
        return
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - Dask runs only
    from prefect_dask import DaskTaskRunner  # noqa: PLC0415 - as above

    from pld_pipeline.teacher.dask_cluster import connect, local_cluster  # noqa: PLC0415

    if not os.environ.get("PREFECT_API_URL"):
        with get_client(sync_client=True) as client:
            if str(client.api_url).startswith("http"):
                os.environ["PREFECT_API_URL"] = str(client.api_url).rstrip("/")
    if config.dask_address:
        connect(config.dask_address, min(config.lost_workers_timeout, 60.0)).close()
        yield DaskTaskRunner(address=config.dask_address), config.dask_address
        return
    with local_cluster(
        config.dask_workers, config.gpus_per_task, config.lost_workers_timeout
    ) as address:
        yield DaskTaskRunner(address=address), address
