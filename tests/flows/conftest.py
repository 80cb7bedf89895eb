"""One Prefect test harness (temporary server, temp PREFECT_HOME) for every flow test."""

from __future__ import annotations

import os
import tempfile

import pytest

# Set before Prefect is first imported: a throwaway home, no telemetry, a patient start.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pld-prefect-home-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pld_pipeline,storage")
# Library tests log outside flow runs; that is expected, not worth a warning each.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


@pytest.fixture(scope="session")
def prefect_harness():
    """Flow tests request this; it starts once per session, only when a flow test runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
