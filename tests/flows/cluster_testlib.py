"""Real servers on loopback, started the way docs/scaling-out.md says, for tests of the installed CLI.

Every process here runs the installed `.venv/bin/...` commands from a folder outside the
repository with no PYTHONPATH into it, as a user's terminal or a cluster node would:
a Prefect server, a Dask scheduler, Dask workers each in their own folder and process
group (so a test can SIGKILL one like a machine dying), an S3 server (moto), and `pld`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.prefix) / "bin"  # the venv `make` builds: .venv/bin
TEACHER = "pld_pipeline.demo.small_models:seeded_tiny_cnn"

# A user's own teacher module, outside the repository: the package's seeded tiny CNN,
# slowed down so a pass can be interrupted mid-shard. Its outputs equal TEACHER's.
USER_TEACHER = """
import os, time
from torch import nn
from pld_pipeline.demo.small_models import seeded_tiny_cnn

class Slow(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        time.sleep(float(os.environ.get("USER_TEACHER_SECONDS", "1.0")))
        return self.inner(x)

def slow_tiny_cnn(num_classes: int = 10) -> nn.Module:
    return Slow(seeded_tiny_cnn(num_classes))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def user_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A terminal's environment: no PYTHONPATH into the repo, Prefect quiet and patient."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYTEST"))}
    env.pop("PYTHONPATH", None)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        PYTHONUNBUFFERED="1",
        # Never ask a cloud metadata service for credentials: tests talk to loopback only.
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


def write_user_teacher(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "user_teacher.py").write_text(USER_TEACHER)
    return folder


def cache_config(dataset: Path, output: str, **overrides) -> dict:
    """The tiny pass every test runs: 12 images, 2 replay views, top-4, shards of 2."""
    data = {
        "dataset_root": str(dataset),
        "classes": "sorted-folders",  # 3 folders under a 10-class teacher, on purpose
        "min_label_agreement": 0.0,  # an untrained teacher
        "teacher": {"name": TEACHER, "num_classes": 10, "input_size": 24},
        "views": {"mode": "replay", "num_views": 2, "seed": 3},
        "format": "topk",
        "k": 4,
        "temperatures": [1.0, 2.0],
        "shard_size": 2,
        "output": output,
        "batch_size": 2,
        "num_workers": 0,
        "device": "cpu",
        "replay_check_samples": 4,
    }
    for key, value in overrides.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Proc:
    """A background process in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start(name: str, args: list[str], cwd: Path, env: dict[str, str]) -> Proc:
    cwd.mkdir(parents=True, exist_ok=True)
    log = cwd / f"{name}.log"
    with open(log, "w") as out:
        popen = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return Proc(name, popen, log)


def wait_until(condition, timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited while waiting for {what}:\n{proc.output()[-4000:]}"
            )
        if time.monotonic() > deadline:
            detail = proc.output()[-4000:] if proc is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        time.sleep(0.5)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Cluster:
    """A Dask scheduler and its workers, as a user starts them (docs/scaling-out.md)."""

    root: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    scheduler: Proc | None = None
    workers: list[Proc] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start_scheduler(self) -> None:
        self.scheduler = start(
            "scheduler",
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard"],
            self.root / "scheduler", self.env,
        )  # fmt: skip
        wait_until(lambda: _port_open(self.port), 120, "the Dask scheduler", self.scheduler)

    def start_worker(self, name: str, gpus: int = 1) -> Proc:
        """`dask worker ADDRESS --nthreads 1 --resources GPU=1`, from its own folder.

        Each worker has its own PREFECT_HOME, as on its own machine: a worker without
        PREFECT_API_URL starts a temporary Prefect server, which on a shared home would
        share (and lock) the SQLite file of the pld process's server.
        """
        args = [str(BIN / "dask"), "worker", self.address, "--nthreads", "1", "--name", name,
                "--no-dashboard"]  # fmt: skip
        if gpus:
            args += ["--resources", f"GPU={gpus}"]
        folder = self.root / f"worker-{name}"
        env = dict(self.env, PREFECT_HOME=str(folder / "prefect-home"))
        proc = start(f"worker-{name}", args, folder, env)
        self.workers.append(proc)
        return proc

    def start(self, *workers: str) -> list[Proc]:
        """A scheduler and these workers (one GPU resource each), all joined."""
        self.start_scheduler()
        procs = [self.start_worker(name) for name in workers]
        self.wait_for_workers(len(workers))
        return procs

    def wait_for_workers(self, count: int, timeout: float = 180) -> None:
        import distributed

        with distributed.Client(self.address, timeout=60) as client:
            client.wait_for_workers(count, timeout=timeout)

    def stop(self) -> None:
        for proc in [*self.workers, *([self.scheduler] if self.scheduler else [])]:
            proc.kill_group()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_prefect_server(
    root: Path, env: dict[str, str], port: int | None = None
) -> tuple[Proc, str]:
    """`prefect server start --host 127.0.0.1 --port P`; returns (process, API URL).

    Its database lives under `root`, so starting it again with the same root and port is
    a restart that keeps every run.
    """
    port = port or free_port()
    server_env = dict(env, PREFECT_HOME=str(root / "prefect-server-home"))
    server_env.pop("PREFECT_API_URL", None)
    proc = start(
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        root / "prefect-server", server_env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    wait_until(lambda: http_ok(url + "/health"), 180, "the Prefect server", proc)
    return proc, url


def run_pld(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """`.venv/bin/pld ARGS` in a subprocess from `cwd` (outside the repository)."""
    assert REPO not in cwd.resolve().parents
    assert cwd.resolve() != REPO
    return subprocess.run(
        [str(BIN / "pld"), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def start_pld(args: list[str], cwd: Path, env: dict[str, str]) -> Proc:
    assert REPO not in cwd.resolve().parents
    return start("pld", [str(BIN / "pld"), *args], cwd, env)


def arrays_of(url: str, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Every array of a cache read with plain zarr (independent of `storage`)."""
    import zarr

    group = zarr.open_group(url, mode="r", storage_options=storage_options)
    return {name: np.asarray(array[...]) for name, array in group.arrays()}


def assert_same_arrays(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    assert sorted(left) == sorted(right)
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def done_count(url: str, storage_options: dict | None = None) -> int:
    """How many (view, shard) done bits are set, read with plain zarr."""
    import zarr

    try:
        group = zarr.open_group(url, mode="r", storage_options=storage_options)
        return int(np.asarray(group["done"][...]).sum())
    except Exception:  # noqa: BLE001 - not created yet
        return 0


S3_KEYS = {"AWS_ACCESS_KEY_ID": "pld-test-key", "AWS_SECRET_ACCESS_KEY": "pld-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@dataclass
class S3Server:
    """moto's S3 server on 127.0.0.1:<free port>, fake credentials, one bucket."""

    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """What a user exports: the standard AWS variables, endpoint included."""
        return dict(S3_KEYS, AWS_ENDPOINT_URL=self.endpoint)

    @property
    def storage_options(self) -> dict:
        """The same, as fsspec storage_options (for plain-zarr reads in this process)."""
        return {"endpoint_url": self.endpoint, "key": S3_KEYS["AWS_ACCESS_KEY_ID"],
                "secret": S3_KEYS["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def filesystem(self):  # s3fs.S3FileSystem
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)


def start_s3_server(bucket: str = "pld-caches"):  # (ThreadedMotoServer, S3Server)
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)  # fmt: skip
    return server, S3Server(endpoint, bucket)
