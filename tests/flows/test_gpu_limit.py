"""The `gpu` global concurrency limit on the test harness's server: created, held once, released."""

from __future__ import annotations

import pytest

from pld_pipeline.errors import ConfigError

pytestmark = pytest.mark.usefixtures("prefect_harness")


def active_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_a_slot_is_held_once_per_context_released_after_and_never_taken_on_cpu(monkeypatch):
    from flows.concurrency import TAKE_ON_CPU_ENV, ensure_gpu_limit, gpu_slot

    assert ensure_gpu_limit("gpu-slot-test", 2) == 2
    monkeypatch.setenv(TAKE_ON_CPU_ENV, "1")  # CPU work asks for the limit as CUDA work would
    with gpu_slot("gpu-slot-test", "cpu", "outer") as held:
        assert held
        assert active_slots("gpu-slot-test") == 1
        # A student run's task inside its flow's slot does not take a second one.
        with gpu_slot("gpu-slot-test", "cpu", "inner") as again:
            assert not again
            assert active_slots("gpu-slot-test") == 1
    assert active_slots("gpu-slot-test") == 0
    with (  # noqa: PT012 - released on errors too
        pytest.raises(RuntimeError, match="boom"),
        gpu_slot("gpu-slot-test", "cpu", "failing", slots=2),
    ):
        assert active_slots("gpu-slot-test") == 2
        raise RuntimeError("boom")
    assert active_slots("gpu-slot-test") == 0
    # More slots than the limit has would wait forever: refused, naming the fix.
    with (
        pytest.raises(ConfigError, match=r"needs 3 slot\(s\) of the 'gpu-slot-test' .* has 2"),
        gpu_slot("gpu-slot-test", "cpu", "Shard 4", slots=3),
    ):
        pass
    with gpu_slot("no-such-limit", "cpu", "unlimited") as held:  # missing limit: no wait
        assert not held
    with gpu_slot(None, "cpu", "opted out") as held:
        assert not held
    monkeypatch.delenv(TAKE_ON_CPU_ENV)
    with gpu_slot("gpu-slot-test", "cpu", "plain CPU work") as held:
        assert not held
        assert active_slots("gpu-slot-test") == 0


def test_serve_creates_a_missing_limit_and_keeps_slots_set_elsewhere():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from flows.concurrency import ensure_gpu_limit
    from pld_pipeline.device_policy import visible_gpu_count

    assert ensure_gpu_limit("gpu-serve-test") == max(1, visible_gpu_count())
    with get_client(sync_client=True) as client:  # someone sets 5 slots in the UI
        client.update_global_concurrency_limit(
            "gpu-serve-test", GlobalConcurrencyLimitUpdate(limit=5)
        )
    assert ensure_gpu_limit("gpu-serve-test") == 5  # kept: no slots asked for
    assert ensure_gpu_limit("gpu-serve-test", 3) == 3  # `pld serve --gpu-slots 3`
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("gpu-serve-test").limit == 3
