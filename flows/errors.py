"""The errors only the flows raise: the Dask cluster of a pass, and time limits.

They are `PLDError`s, so the `pld` command prints them as one line (exit status 2) and
Prefect's retry rules treat them as final, like the library's own errors.
"""

from __future__ import annotations

from pld_pipeline.errors import PLDError


class ClusterError(PLDError, RuntimeError):
    """The Dask cluster running a teacher pass cannot run its shard tasks."""


class SchedulerUnreachableError(ClusterError, ConnectionError):
    """The Dask scheduler cannot be reached, or was lost mid-pass."""


class WorkersLostError(ClusterError):
    """No usable Dask worker was left for longer than the configured bound."""


class WorkerEnvironmentError(ClusterError, ImportError):
    """A Dask worker does not import this project's packages (not installed, or shadowed)."""


class ShardTaskError(ClusterError):
    """A shard task kept killing its workers, or failed in a way a retry cannot fix."""


class ShardTimeoutError(PLDError, TimeoutError):
    """A teacher-pass shard task ran past `shard_timeout_s`; resuming the pass is safe."""


class RunTimeoutError(PLDError, TimeoutError):
    """A student run ran past `timeout_s`; resuming from its last checkpoint is safe."""
