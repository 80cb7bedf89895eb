"""bench/gpu.sh on a machine without a GPU: what it would run, and that its sections are independent.

The real run needs a GPU; here `--dry-run` lists the plan, and a stand-in for python
(failing one benchmark, hanging in another) shows that one failure or time-out does not
stop the other sections, that the run exits non-zero, and that the summary names each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.sh"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def test_dry_run_lists_every_cuda_figure_and_writes_nothing(tmp_path):
    proc = run("--dry-run", env={"RESULTS": str(tmp_path / "results")})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for section in ("setup", "env", "cuda-tests", "losses", "teacher", "student",
                    "student-data", "demo"):  # fmt: skip
        assert f"[{section}]" in out
    for fragment in (
        "--no-index --no-deps --no-compile --target",
        "-m cuda tests/pld_pipeline/test_cuda.py",
        "bench/losses.py --device cuda --sizes 1024x1000 1024x21843",
        "bench/teacher.py --device cuda --model resnet50",
        "--amp bf16",
        "bench/student.py --device cuda",
        "bench/student_data.py --device cuda",
        "demo --quick",
        "device=cuda",
    ):
        assert fragment in out, fragment
    for name in ("env", "tests", "losses", "teacher", "student", "student-data", "demo"):
        assert f"gpu-{name}.json" in out
    assert not (tmp_path / "results").exists()


FAKE_PYTHON = """#!/usr/bin/env bash
case "$*" in
  *bench/losses.py*) echo "losses: simulated failure" >&2; exit 3 ;;
  *bench/teacher.py*) sleep 60 ;;
  *gpu_summary.py\\ env*) echo '{"device_name": "fake"}' > "${@: -1}"; exit 0 ;;
  *gpu_summary.py*) exec "REAL_PYTHON" "$@" ;;
  *) exit 0 ;;
esac
"""


def test_a_failing_and_a_hanging_section_do_not_stop_the_others(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.replace("REAL_PYTHON", sys.executable))
    fake.chmod(0o755)
    results = tmp_path / "results"
    out = tmp_path / "out"
    started = time.monotonic()
    proc = run(
        "--only",
        "env,losses,teacher,student",
        env={
            "PYTHON": str(fake),
            "RESULTS": str(results),
            "GPU_TIMEOUT": "3",
            "GPU_WORK": str(tmp_path / "work"),
            "OUT": str(out),
        },  # fmt: skip
    )
    assert time.monotonic() - started < 60  # the hanging section was cut at 3 s
    assert proc.returncode != 0
    sections = {s["name"]: s for s in json.loads((results / "gpu-sections.json").read_text())}
    assert list(sections) == ["env", "losses", "teacher", "student"]
    assert sections["env"]["status"] == "ok"
    assert sections["student"]["status"] == "ok"
    assert sections["losses"]["status"] == "FAILED (exit 3)"
    assert sections["teacher"]["status"].startswith("TIMEOUT")
    assert "simulated failure" in proc.stdout  # the failing section's log tail is shown
    summary = proc.stdout[proc.stdout.index("=== summary") :]
    assert "2 section(s) failed" in summary
    assert "| losses | FAILED (exit 3) |" in summary
    assert "| env | ok |" in summary
    assert "fake" in summary
    assert (out / "gpu-sections.json").is_file()
    assert (out / "gpu-logs" / "losses.log").is_file()


def test_the_wheel_list_covers_the_project_and_leaves_out_the_machines_packages():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_wheels
    finally:
        sys.path.pop(0)
    wanted = dict(spec.split("==") for spec in gpu_wheels.missing())
    for name in ("prefect", "prefect-dask", "zarr", "numcodecs", "dask", "distributed",
                 "pydantic", "pydantic-core", "typing-extensions", "sqlalchemy", "uvicorn"):  # fmt: skip
        assert name in wanted, name
    assert not set(wanted) & gpu_wheels.PREINSTALLED  # torch, numpy, ... never carried
    import prefect

    assert wanted["prefect"] == prefect.__version__  # the tested versions
    assert gpu_wheels.unmet() == []  # this environment satisfies every requirement
