"""Time limits on shard tasks and student runs, with failures that say what stopped and that resuming is safe.

Built on Prefect's own timeout scope (`prefect.utilities.timeout.timeout`): in the main
thread an alarm interrupts the work, in a worker thread (thread runner, Dask worker) an
exception is raised into it at its next Python step. The clock starts once the work
holds its GPU slot, so waiting for a GPU never counts as stalling.

A timed-out task run ends Failed with the state name `TimedOut` (Prefect's name for
timeouts) and our message, and is not retried: a stall is rarely fixed by running the
same work again at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.utilities.timeout import timeout

from pld_pipeline.errors import PLDError


class ShardTimeoutError(PLDError, TimeoutError):
    """A teacher-pass shard task ran past `shard_timeout_s`; resuming the pass is safe."""


class RunTimeoutError(PLDError, TimeoutError):
    """A student run ran past `timeout_s`; resuming from its last checkpoint is safe."""


class _ExpiredError(TimeoutError):
    """Prefect's scope expired (told apart from a TimeoutError the work raises itself)."""


@contextmanager
def shard_time_limit(
    seconds: float | None, shard: int, views: list[int], output: str
) -> Iterator[None]:
    """Stop one teacher-pass shard after `seconds` with a ShardTimeoutError (None: no limit)."""
    try:
        with timeout(seconds, timeout_exc_type=_ExpiredError):
            yield
    except _ExpiredError as exc:
        raise ShardTimeoutError(shard_timeout_message(seconds, shard, views, output)) from exc


@contextmanager
def run_time_limit(seconds: float | None, name: str, run_dir: str) -> Iterator[None]:
    """Stop one student run after `seconds` with a RunTimeoutError (None: no limit)."""
    try:
        with timeout(seconds, timeout_exc_type=_ExpiredError):
            yield
    except _ExpiredError as exc:
        raise RunTimeoutError(run_timeout_message(seconds, name, run_dir)) from exc


def shard_timeout_message(seconds: float | None, shard: int, views: list[int], output: str) -> str:
    return (
        f"Shard {shard} (views {views}) of the teacher pass into {output} timed out after "
        f"shard_timeout_s={seconds:g} s. Resuming is safe: views finished before the stop "
        "kept their done bits and the rest are recomputed, so rerun the same `pld cache` "
        "command (or retry the flow run). If the shard is only slow, raise shard_timeout_s."
    )


def run_timeout_message(seconds: float | None, name: str, run_dir: str) -> str:
    return (
        f"Student run {name!r} ({run_dir}) timed out after timeout_s={seconds:g} s. "
        "Resuming is safe: its last epoch checkpoint is kept, so rerun it with resume=true "
        "(a rerun sweep resumes its unfinished runs by itself). If the run is only slow, "
        "raise timeout_s or set it to null."
    )
