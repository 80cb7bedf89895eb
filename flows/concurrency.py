"""GPUs shared across flow runs: a Prefect global concurrency limit (default `gpu`) held while CUDA is used.

One slot per GPU. Every unit of work on CUDA (a shard task, the replay check, a student
run) holds a slot while it uses the device, so a sweep started from the UI and a pass
started by cron never share a GPU by accident; CPU work takes none. (Dask's `GPU` worker
resource places the shards of *one* pass; this limit counts GPUs across *all* runs of a
Prefect server.) It counts GPUs, it does not choose one: that is each run's `device`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from flows.artifacts import run_logger_or
from pld_pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_GPU_LIMIT = "gpu"
# Tests (and dry runs on a laptop) set this: CPU work takes the limit as if it used CUDA.
TAKE_ON_CPU_ENV = "PLD_TAKE_GPU_LIMIT_ON_CPU"
# A slot is a lease Prefect renews; a holder that dies frees it when the lease runs out.
LEASE_SECONDS = 300.0
# Limits this thread of work holds already (a student run's flow holds the slot its task uses).
_held: ContextVar[frozenset[str]] = ContextVar("pld_gpu_limits_held", default=frozenset())
_reported_missing: set[str] = set()  # missing limits logged by this process (once each)


def uses_cuda(device: str) -> bool:
    """Whether work on `device` takes a slot: it runs on CUDA in this process (or the test
    switch PLD_TAKE_GPU_LIMIT_ON_CPU=1 says to treat it so)."""
    if os.environ.get(TAKE_ON_CPU_ENV, "").lower() in ("1", "true", "yes"):
        return True
    if device in ("cpu", "mps"):
        return False
    from pld_pipeline.device_policy import uses_cuda as on_cuda  # noqa: PLC0415 - torch

    return on_cuda(device)


@contextmanager
def gpu_slot(limit: str | None, device: str, holder: str, slots: int = 1) -> Iterator[bool]:
    """Hold `slots` slots of the global concurrency limit `limit` while inside, when
    `device` is CUDA. Yields whether slots are held.

    No slot is taken for CPU work, with `limit=None`, when this context already holds the
    limit, or when the server has no such limit (logged once per process: `pld serve`
    creates it). Waiting for a slot is logged, naming `holder`.

    Raises:
        ConfigError: the limit has fewer slots than `slots` (the wait would never end).
    """
    if limit is None or limit in _held.get() or not uses_cuda(device):
        yield False
        return
    current = _read_limit(limit)
    if current is None:
        if limit not in _reported_missing:
            _reported_missing.add(limit)
            run_logger_or(logger).info(
                "No Prefect concurrency limit %r on this server: %s does not wait for a GPU "
                "slot (`pld serve` creates it; or `prefect gcl create %s --limit N`).",
                limit, holder, limit,
            )  # fmt: skip
        yield False
        return
    if current.active and slots > current.limit:
        raise ConfigError(
            f"{holder} needs {slots} slot(s) of the {limit!r} concurrency limit, which has "
            f"{current.limit}, so it would wait forever; give the limit more slots (`pld serve "
            f"--gpu-slots {slots}` or the UI's Concurrency page) or lower gpus_per_task."
        )
    if current.active_slots + slots > current.limit:
        run_logger_or(logger).info(
            "%s waits for a slot of the %r limit (%d of %d in use).",
            holder, limit, current.active_slots, current.limit,
        )  # fmt: skip
    token = _held.set(_held.get() | {limit})
    try:
        with concurrency(
            limit, occupy=slots, lease_duration=LEASE_SECONDS, strict=True,
            holder=_current_holder(), raise_on_lease_renewal_failure=False,
        ):  # fmt: skip
            run_logger_or(logger).info("%s holds %d slot(s) of the %r limit.", holder, slots, limit)
            try:
                yield True
            finally:
                from pld_pipeline.device_policy import release_cached_gpu_memory  # noqa: PLC0415

                release_cached_gpu_memory()
    finally:
        _held.reset(token)


def ensure_gpu_limit(name: str = DEFAULT_GPU_LIMIT, slots: int | None = None) -> int:
    """Create the global concurrency limit `name` when it is missing (what `pld serve` does)
    and return its slots: `slots`, else one per GPU of this machine (at least 1). An
    existing limit keeps its slots (maybe set in the UI) unless `slots` is given."""
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if slots is None or existing.limit == slots:
                logger.info("Concurrency limit %r exists with %d slot(s).", name, existing.limit)
                return existing.limit
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots))
            logger.info("Concurrency limit %r: %d -> %d slot(s).", name, existing.limit, slots)
            return slots
        from pld_pipeline.device_policy import visible_gpu_count  # noqa: PLC0415 - torch

        count = slots if slots is not None else max(1, visible_gpu_count())
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=count)
            )
        except ObjectAlreadyExists:  # created by another process in between
            return client.read_global_concurrency_limit_by_name(name).limit
        logger.info("Created concurrency limit %r with %d slot(s) (one per GPU).", name, count)
        return count


def _read_limit(name: str):  # noqa: ANN202 - GlobalConcurrencyLimitResponse | None
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None


def _current_holder() -> ConcurrencyLeaseHolder | None:
    """The task run (else flow run) asking for the slot, so the UI shows who holds it."""
    task_run = TaskRunContext.get()
    if task_run is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id)
    flow_run = FlowRunContext.get()
    if flow_run is not None and flow_run.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.flow_run.id)
    return None
