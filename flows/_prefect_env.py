"""Prefect settings the project runs with unless the user set them: one home for them.

Prefect reads them when it is imported, so they are applied before that: by the `pld`
command at start and by the test suite's conftest. They turn off telemetry (the machines
this runs on often have no internet), give the temporary local server time to start on
small machines, and send the library's own logs to the flow run logs. This module imports
nothing of Prefect.
"""

from __future__ import annotations

import os

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "pld_pipeline,storage",
}


def apply_prefect_defaults() -> None:
    """Set each default in os.environ where the user has not set it (theirs win)."""
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
