"""Time limits (main thread and worker threads), `{date}` outputs and the CUDA test switch; no server."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from flows.timeouts import RunTimeoutError, ShardTimeoutError
from pld_pipeline.errors import PLDError


def busy(seconds: float) -> None:
    """Python-level work (the exception Prefect raises into a worker thread lands between steps)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def test_shard_time_limit_stops_work_in_the_main_thread_with_the_documented_message():
    from flows.timeouts import shard_time_limit

    started = time.monotonic()
    with pytest.raises(ShardTimeoutError) as info, shard_time_limit(0.3, 7, [0, 2], "/caches/c1"):
        busy(30)
    assert time.monotonic() - started < 20  # stopped, not run to the end
    message = str(info.value)
    assert message.startswith(
        "Shard 7 (views [0, 2]) of the teacher pass into /caches/c1 timed out"
    )
    assert "shard_timeout_s=0.3 s" in message
    assert "Resuming is safe" in message
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, PLDError)


def test_run_time_limit_stops_work_in_a_worker_thread():
    from flows.timeouts import run_time_limit

    caught: list[BaseException] = []

    def work() -> None:
        try:
            with run_time_limit(0.3, "loss.name=pld", "/runs/s/loss.name=pld"):
                busy(30)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            caught.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=25)
    assert not thread.is_alive()
    assert len(caught) == 1
    assert isinstance(caught[0], RunTimeoutError)
    message = str(caught[0])
    assert message.startswith("Student run 'loss.name=pld' (/runs/s/loss.name=pld) timed out")
    assert "timeout_s=0.3 s" in message
    assert "resume=true" in message


def test_no_limit_and_the_works_own_timeout_errors_pass_through():
    from flows.timeouts import run_time_limit, shard_time_limit

    with shard_time_limit(None, 0, [0], "x"):
        busy(0.05)
    with pytest.raises(TimeoutError, match="socket") as info, run_time_limit(30, "r", "d"):
        raise TimeoutError("socket read timed out")
    assert not isinstance(info.value, PLDError)


@pytest.mark.parametrize(
    ("output", "scheduled", "expected"),
    [
        ("s3://caches/weekly-{date}", dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC),
         "s3://caches/weekly-2026-11-29"),
        # Scheduled 23:30 at UTC-5 is the next day in UTC.
        ("/c/{date}/x", dt.datetime(2026, 11, 28, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
         "/c/2026-11-29/x"),
        ("/c/fixed", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "/c/fixed"),
    ],
)  # fmt: skip
def test_date_in_output_is_the_scheduled_utc_date(output, scheduled, expected):
    from pld_pipeline.configs.cache import resolve_output

    assert resolve_output(output, scheduled) == expected


def test_cuda_switch(monkeypatch):
    import torch

    from flows.concurrency import TAKE_ON_CPU_ENV, uses_cuda

    monkeypatch.delenv(TAKE_ON_CPU_ENV, raising=False)
    assert uses_cuda("cuda")
    assert uses_cuda("cuda:1")
    assert not uses_cuda("cpu")
    assert uses_cuda("auto") == torch.cuda.is_available()
    monkeypatch.setenv(TAKE_ON_CPU_ENV, "1")
    assert uses_cuda("cpu")
