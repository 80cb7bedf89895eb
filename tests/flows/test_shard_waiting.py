"""The task-run state writes of a teacher pass are best effort and bounded: against a fake
Prefect API on loopback that answers, refuses, fails or never answers."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed

from flows.shard_waiting import set_states_bounded

ACCEPTED = {"state": None, "status": "ACCEPT", "details": {"type": "accept_details"}}


@dataclass
class FakeAPI:
    """An HTTP server that records every request and answers them all one way."""

    mode: str  # "ok", "404", "503" or "stall" (read the request, never answer)
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                api.requests.append((self.command, self.path, body))
                if api.mode == "stall":
                    api.release.wait(60)
                    return
                ok = api.mode == "ok" and self.path.endswith("/set_state")
                if ok or self.path.startswith("/api/csrf-token"):  # no CSRF: an older server
                    status = 200 if ok else 404
                else:
                    status = 404 if api.mode == "ok" else int(api.mode)
                payload = json.dumps(ACCEPTED if ok else {"detail": "no"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer  # noqa: N815 - http.server's handler names

        return Handler

    def posts(self) -> list[tuple[str, dict]]:
        return [(path, body) for method, path, body in self.requests if method == "POST"]


@pytest.fixture
def fake_api(request):
    api = FakeAPI(request.param)
    server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield api
    finally:
        api.release.set()
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class FakeFuture:
    task_run_id: uuid.UUID = field(default_factory=uuid.uuid4)


def run_bounded(updates, **kwargs) -> int:
    """set_states_bounded in a thread: a hang fails the test instead of blocking it."""
    outcome: list[int] = []
    context = contextvars.copy_context()  # the fake API's URL is in a context variable
    thread = threading.Thread(
        target=context.run, args=(lambda: outcome.append(set_states_bounded(updates, **kwargs)),)
    )
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "set_states_bounded did not return"
    return outcome[0]


def crashed(count: int) -> list[tuple[FakeFuture, object]]:
    return [(FakeFuture(), Crashed(message=f"stopped {i}")) for i in range(count)]


@pytest.mark.parametrize("fake_api", ["ok"], indirect=True)
def test_every_state_is_forced_in_order(fake_api, caplog):
    updates = crashed(3)
    with caplog.at_level(logging.WARNING, logger="flows.shard_waiting"):
        assert run_bounded(updates) == 3
    posts = fake_api.posts()
    assert [path for path, _ in posts] == [
        f"/api/task_runs/{future.task_run_id}/set_state" for future, _ in updates
    ]
    assert all(body["force"] is True for _, body in posts)
    assert [body["state"]["type"] for _, body in posts] == ["CRASHED"] * 3
    assert [body["state"]["message"] for _, body in posts] == [f"stopped {i}" for i in range(3)]
    assert not caplog.records


@pytest.mark.parametrize("fake_api", ["404"], indirect=True)
def test_task_runs_the_server_does_not_know_are_skipped(fake_api, caplog):
    with caplog.at_level(logging.WARNING, logger="flows.shard_waiting"):
        assert run_bounded(crashed(3)) == 0
    assert len(fake_api.posts()) == 3  # each one tried: the server answered
    assert not caplog.records


@pytest.mark.parametrize("fake_api", ["503"], indirect=True)
def test_a_failing_server_gets_one_request_not_retries(fake_api, caplog):
    with caplog.at_level(logging.WARNING, logger="flows.shard_waiting"):
        assert run_bounded(crashed(3)) == 0
    assert len(fake_api.posts()) == 1  # Prefect's client would retry a 503 five times
    assert "Gave up setting 3 of 3 task-run state(s)" in caplog.text


@pytest.mark.parametrize("fake_api", ["stall"], indirect=True)
def test_a_server_that_never_answers_gets_one_request(fake_api, caplog):
    with caplog.at_level(logging.WARNING, logger="flows.shard_waiting"):
        assert run_bounded(crashed(4), timeout_s=0.5) == 0
    # One request timed out; no retry of it (Prefect's default: 5 more, 60 s each) and no
    # further writes to a server that does not answer.
    assert len(fake_api.requests) == 1
    assert "Gave up setting 4 of 4 task-run state(s)" in caplog.text
    assert "Timeout" in caplog.text


@pytest.mark.parametrize("fake_api", ["ok"], indirect=True)
def test_nothing_is_sent_once_the_budget_is_spent(fake_api, caplog):
    with caplog.at_level(logging.WARNING, logger="flows.shard_waiting"):
        assert run_bounded(crashed(2), budget_s=0.0) == 0
    assert fake_api.posts() == []
    assert "Gave up setting 2 of 2" in caplog.text
    assert "budget" in caplog.text
