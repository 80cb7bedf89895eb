"""This project's packages resolve in every process an install creates, even from a folder
that holds empty `storage/`, `pld_pipeline/` and `flows/` folders (as every Dask worker's
scratch folder holds `storage/`): DataLoader workers (fork, spawn, forkserver), torchrun
ranks, a served Prefect deployment's flow run, and a wheel installed with pip.

Every process runs the installed interpreter or command from that folder, with no
PYTHONPATH into the repository. (Dask workers: test_installed_dask.py.)
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cluster_testlib import (
    BIN,
    REPO,
    cache_config,
    start,
    start_prefect_server,
    user_env,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PACKAGES = ("storage", "pld_pipeline", "flows")

PROBE = """
import json, os, sys
import torch
from torch.utils.data import DataLoader, Dataset

def where():
    import storage, pld_pipeline, flows
    return {"storage": storage.__file__, "pld_pipeline": pld_pipeline.__file__,
            "flows": flows.__file__, "has_open_cache": hasattr(storage, "open_cache")}

def first(batch):
    return batch[0]

class Where(Dataset):
    def __len__(self):
        return 1
    def __getitem__(self, i):
        return json.dumps(where())

if __name__ == "__main__":
    found = {"main": where()}
    if os.environ.get("RANK") is None:
        for method in ("fork", "spawn", "forkserver"):
            loader = DataLoader(Where(), num_workers=1, multiprocessing_context=method,
                                collate_fn=first)
            found[method] = json.loads(next(iter(loader)))
    else:
        found = {"rank" + os.environ["RANK"]: found["main"]}
    print("FOUND " + json.dumps(found))
"""


def shadowed_folder(root: Path) -> Path:
    """A working directory whose empty package-named folders come first on sys.path."""
    for name in PACKAGES:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def found_in(output: str) -> dict:
    found: dict = {}
    for line in output.splitlines():
        if line.startswith("FOUND "):
            found.update(json.loads(line[6:]))
    return found


def assert_project_packages(found: dict, install_root: Path) -> None:
    assert found
    for process, files in found.items():
        assert files["has_open_cache"], (process, files)
        for name in PACKAGES:
            assert files[name] == str(install_root / name / "__init__.py"), (process, name, files)


def test_dataloader_workers_and_torchrun_ranks_import_the_project(tmp_path):
    cwd = shadowed_folder(tmp_path / "cwd")
    (cwd / "probe.py").write_text(PROBE)
    env = user_env(tmp_path)
    plain = subprocess.run([str(BIN / "python"), "probe.py"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    found = found_in(plain.stdout)
    assert set(found) == {"main", "fork", "spawn", "forkserver"}
    assert_project_packages(found, REPO)
    ranks = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "probe.py"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    found = found_in(ranks.stdout)
    assert set(found) == {"rank0", "rank1"}
    assert_project_packages(found, REPO)


def test_a_wheel_installed_with_pip_imports_from_site_packages(tmp_path):
    """`pip install` of the wheel (here into a target folder first on PYTHONPATH, standing in
    for a fresh environment's site-packages): the wheel's packages win over the folders."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [str(BIN / "python"), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("pld_pipeline-*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    cwd = shadowed_folder(tmp_path / "cwd")
    (cwd / "probe.py").write_text(PROBE)
    run = subprocess.run([str(BIN / "python"), "probe.py"], cwd=cwd,
                         env=user_env(tmp_path, PYTHONPATH=str(site)),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    found = found_in(run.stdout)
    assert set(found) == {"main", "fork", "spawn", "forkserver"}
    assert_project_packages(found, site)
    assert (site / "storage" / "README.md").is_file()  # package data travels with the wheel


def api(url: str, path: str, body: dict | None = None, method: str = "POST") -> object:
    """One REST call; a 503 (the server's SQLite busy under load) is retried, as Prefect's
    own client does."""
    data = None if method == "GET" else json.dumps(body or {}).encode()
    for attempt in range(10):
        request = urllib.request.Request(url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 9:
                raise
            time.sleep(2 + attempt)
    raise AssertionError("unreachable")


@pytest.mark.timeout(1500)  # `pld serve` imports every flow first: minutes on a busy 2-core machine
def test_a_served_deployment_runs_from_a_shadowed_folder(tmp_path, tiny_imagefolder):
    """`pld serve` started from the shadowed folder; a cache-teacher run created through the
    API executes in the served process's own subprocess and completes."""
    server, url = start_prefect_server(tmp_path, user_env(tmp_path))
    env = user_env(tmp_path, PREFECT_API_URL=url, PREFECT_RUNNER_POLL_FREQUENCY="2")
    cwd = shadowed_folder(tmp_path / "serve-cwd")
    served = start("pld-serve", [str(BIN / "pld"), "serve"], cwd, env)
    try:

        def deployment_id() -> str | None:
            found = api(
                url, "/deployments/filter", {"deployments": {"name": {"any_": ["cache-teacher"]}}}
            )
            return found[0]["id"] if found else None

        wait_until(lambda: deployment_id() is not None, 600, "the served deployments", served)
        out = tmp_path / "served.zarr"
        config = cache_config(tiny_imagefolder, str(out), replay_check_samples=0)
        run = api(
            url,
            f"/deployments/{deployment_id()}/create_flow_run",
            {"parameters": {"config": config}},
        )

        def state() -> str:
            return api(url, f"/flow_runs/{run['id']}", method="GET")["state_type"]

        wait_until(
            lambda: state() in ("COMPLETED", "FAILED", "CRASHED"), 600, "the served run", served
        )
        assert state() == "COMPLETED", served.output()[-4000:]
        assert (out / "zarr.json").is_file()
    finally:
        served.kill_group()
        server.kill_group()
        time.sleep(0.5)
