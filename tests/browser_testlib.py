"""Headless Debian Chromium for tests that look at a page as a user would (the Prefect UI,
the docs site): the DOM after the page's scripts ran, and optionally a screenshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(page: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (headless Debian Chromium); optionally a PNG of it."""
    assert CHROMIUM, "Debian's chromium is missing: `make test` installs it (make system-deps)"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
        f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=20000",
    ]  # fmt: skip
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page],
                         capture_output=True, text=True, timeout=180).stdout  # fmt: skip
    if screenshot is not None:
        subprocess.run([CHROMIUM, *flags, f"--screenshot={screenshot}", page],
                       capture_output=True, text=True, timeout=180)  # fmt: skip
    return dom
