"""The errors only the flows raise: a shard or a run past its time limit.

They are `PLDError`s, so the `pld` command prints them as one line (exit status 2) and
Prefect's retry rules treat them as final, like the library's own errors.
"""

from __future__ import annotations

from pld_pipeline.errors import PLDError


class ShardTimeoutError(PLDError, TimeoutError):
    """A teacher-pass shard task ran past `shard_timeout_s`; resuming the pass is safe."""


class RunTimeoutError(PLDError, TimeoutError):
    """A student run ran past `timeout_s`; resuming from its last checkpoint is safe."""
