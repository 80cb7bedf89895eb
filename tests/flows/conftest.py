"""One Prefect test harness (temporary server, temp PREFECT_HOME) for every flow test.

A test that requests the harness runs against a Prefect server: it is marked
`integration`, so `pytest -m "not integration and not slow"` stays Prefect-server-free.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from flows._prefect_env import apply_prefect_defaults

# Set before Prefect is first imported: a throwaway home, and the project's defaults (no
# telemetry, a patient start), as the `pld` command sets them.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pld-prefect-home-")
apply_prefect_defaults()
# Library tests log outside flow runs; that is expected, not worth a warning each.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


@pytest.fixture(scope="session")
def prefect_harness():
    """Flow tests request this; it starts once per session, only when a flow test runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def installed_reference(tiny_imagefolder, tmp_path_factory) -> dict:
    """The thread runner's cache of the tiny pass, made by the installed `pld` CLI, read with
    plain zarr: what every Dask or S3 pass of the same config must equal."""
    from cluster_testlib import arrays_of, cache_config, run_pld, user_env, write_yaml

    work = tmp_path_factory.mktemp("installed-reference")
    out = work / "reference.zarr"
    config = write_yaml(work / "reference.yaml", cache_config(tiny_imagefolder, str(out)))
    result = run_pld(["cache", "--config", str(config)], work, user_env(work))
    assert result.returncode == 0, result.stderr[-4000:]
    return arrays_of(str(out))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
