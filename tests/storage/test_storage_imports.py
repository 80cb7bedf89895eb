"""storage imports only numpy, zarr, numcodecs, dask, fsspec and the standard library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_storage_does_not_import_torch_prefect_or_pld_pipeline():
    code = (
        "import sys, storage, storage.__main__, storage.synthetic\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'prefect', 'pld_pipeline', 'flows', 'torchvision'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
