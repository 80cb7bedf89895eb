"""A real `prefect server start` on a free loopback port, and a tiny REST client for it.

Used by the integration tests that look at what a user would see (test_ui_and_api.py,
test_operations.py). Each test module starts its own server, so one module's runs never
show up in another's counts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(url: str, path: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


@contextmanager
def prefect_server(home: Path) -> Iterator[dict]:
    """Start the server (API + UI) with PREFECT_HOME=home; yield its urls; stop it after."""
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_UI_ENABLED="true",
               # The UI's own API address defaults to port 4200; point it at this port.
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while True:
        try:
            api(url, "/health")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(
                    "Prefect server did not start:\n" + (home / "server.log").read_text()[-3000:]
                )
            time.sleep(1)
    try:
        yield {"url": url, "ui": f"http://127.0.0.1:{port}", "home": home}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
