"""How `pld cache` and `pld train` start on an ImageNet-sized folder: listings per command,
time to the first shard or step, and throughput (issue 18, part 3).

The folder is ImageNet-shaped: 1,000 class folders and `--images N` files (default
1,281,000), hard links to a few small JPEGs, made in seconds. Each command runs as a user
runs it (the installed `pld`, in a subprocess, from a folder outside the repository), with
a tiny teacher and student so what is measured is the start, not the model. A
`sitecustomize` on the subprocess's path wraps the one function that lists a folder
(`ImageFolderDataset._scan`) and writes each call's time to a file: that counts the
listings per command. Each command is stopped once its throughput is measured (a pass
resumes, so nothing is lost). The train command reads a cache of synthetic records for
the same folder (`storage.synthetic`), so it does not wait for a real pass over N images.

The fixed start-up is the same command on a one-shard folder (8,192 images): time to first
step minus its listing. Target: time to first step <= 1.3 x one listing + the fixed
start-up. Every command reports to one Prefect server the bench starts (as a user with
`prefect server start` has), so Prefect's temporary-server start (5-13 s, and noisy) is
not part of any figure.

    .venv/bin/python bench/scale.py --json bench/results/scale.json
    .venv/bin/python bench/scale.py --images 128000 1281000 --json bench/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the `storage` package, not bench/storage.py
BIN = Path(sys.prefix) / "bin"
CLASSES = 1000
TEACHER = "pld_pipeline.demo.small_models:seeded_tiny_cnn"
STUDENT = "pld_pipeline.demo.small_models:tiny_cnn"
HOOK = """
import json, os, time
from pld_pipeline import datasets

_scan = datasets.ImageFolderDataset._scan


def _counted(self, *args, **kwargs):
    started = time.time()
    out = _scan(self, *args, **kwargs)
    with open(os.environ["PLD_BENCH_LISTINGS"], "a") as f:
        f.write(json.dumps({"start": started, "seconds": time.time() - started,
                            "images": len(out[0])}) + "\\n")
    return out


datasets.ImageFolderDataset._scan = _counted
"""


def make_folder(root: Path, images: int, seed: int = 0) -> Path:
    """1,000 class folders holding `images` hard links to 64 small JPEGs, in seconds (a file
    takes at most 65,000 links on ext4)."""
    if (root / "done").is_file() and int((root / "done").read_text()) == images:
        return root / "train"
    rng = np.random.default_rng(seed)
    sources = root / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    jpegs = []
    for i in range(64):
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        path = sources / f"src{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        jpegs.append(str(path))
    train = root / "train"
    per_class = np.full(CLASSES, images // CLASSES)
    per_class[: images % CLASSES] += 1
    for c, count in enumerate(per_class):
        folder = train / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(int(count)):
            os.link(jpegs[(c + j) % len(jpegs)], folder / f"n{c:08d}_{j}.JPEG")
    (root / "done").write_text(str(images))
    return train


def write_synthetic_cache(folder: Path, out: Path, shard_size: int) -> None:
    """A complete eval-view top-5 cache of synthetic records for `folder`'s images."""
    import storage
    from pld_pipeline.datasets import ImageFolderDataset
    from storage.synthetic import make_manifest, make_records

    if (out / "complete").is_file():
        return
    images = ImageFolderDataset(folder)
    manifest = make_manifest(
        num_samples=len(images), num_classes=CLASSES, k=5, num_views=1, shard_size=shard_size,
        temperatures=(1.0,), dataset_fingerprint=images.fingerprint(),
    )  # fmt: skip
    writer = storage.create(str(out), manifest, images.keys, images.labels, overwrite=True)
    for shard in range(writer.num_shards):
        start, stop = writer.shard_range(shard)
        records = make_records(manifest, 0, start, stop, images.labels)
        records["crop"][:] = (0, 0, 40, 48)
        records["hw"][:] = (40, 48)
        writer.write_shard(0, shard, records)
    (out / "complete").write_text("")


def run_until(
    args: list[str], cwd: Path, env: dict[str, str], first: str, count: str, window: float
) -> dict[str, float]:
    """Run `pld ARGS`; the time of the first line holding `first`, and after it, lines
    holding `count` per second over `window` s; then stop the command."""
    started = time.time()
    proc = subprocess.Popen(
        [str(BIN / "pld"), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    seen: dict[str, float] = {}
    events: list[float] = []
    tail: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            now = time.time()
            tail.append(line)
            del tail[:-40]
            if first in line and "first" not in seen:
                seen["first"] = now
            if "first" in seen and count in line:
                events.append(now)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        if "first" in seen and time.time() - seen["first"] > window:
            break
        time.sleep(0.2)
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(timeout=10)
    if "first" not in seen:
        raise RuntimeError(f"`pld {' '.join(args)}` never logged {first!r}:\n{''.join(tail)}")
    span = (events[-1] - events[0]) if len(events) > 1 else 0.0
    return {"started": started, "first": seen["first"], "events": len(events), "span": span}


def measure(
    command: str, folder: Path, work: Path, env: dict[str, str], window: float, shard: int
) -> dict[str, float]:
    """One command over `folder`: listings, their time, time to first shard/step, throughput."""
    listings = work / f"{command}-listings.jsonl"
    listings.unlink(missing_ok=True)
    env = dict(env, PLD_BENCH_LISTINGS=str(listings))
    if command == "cache":
        config = {
            "dataset_root": str(folder), "classes": "sorted-folders", "min_label_agreement": 0.0,
            "teacher": {"name": TEACHER, "num_classes": CLASSES, "input_size": 24},
            "views": {"mode": "replay", "num_views": 2, "seed": 0}, "format": "topk", "k": 5,
            "temperatures": [1.0], "shard_size": shard, "output": str(work / "pass.zarr"),
            "batch_size": 256, "num_workers": 1, "device": "cpu", "overwrite": True,
            "replay_check_samples": 0,
        }  # fmt: skip
        first, count, per_event = "shards)", "shards)", 2 * shard  # records per shard line
    else:
        cache = work / "synthetic.zarr"
        write_synthetic_cache(folder, cache, shard)
        config = {
            "cache": str(cache), "dataset_root": str(folder), "classes": "sorted-folders",
            "student": {"name": STUDENT, "image_size": 24}, "loss": {"name": "pld"},
            "epochs": 1, "batch_size": 256, "num_workers": 1, "device": "cpu",
            "run_dir": str(work / "run"), "log_every": 1, "eval_every": 1,
        }  # fmt: skip
        first, count, per_event = " step ", " step ", 256
    path = work / f"{command}.yaml"
    path.write_text(yaml.safe_dump(config))
    if command == "train":
        subprocess.run(["rm", "-rf", str(work / "run")], check=True)
    timing = run_until([command, "--config", str(path)], work, env, first, count, window)
    calls = (
        [json.loads(line) for line in listings.read_text().splitlines()]
        if listings.exists()
        else []
    )
    return {
        "listings": len(calls),
        "listing_s": sum(c["seconds"] for c in calls),
        "time_to_first_step_s": timing["first"] - timing["started"],
        "samples_per_s": (timing["events"] - 1) * per_event / timing["span"]
        if timing["span"]
        else None,
    }


def start_prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free loopback port; its API URL once it answers."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    log = open(home.parent / "prefect-server.log", "w")  # noqa: SIM115 - open while it runs
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(360):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the Prefect server did not start (see {log.name})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1_281_000])
    parser.add_argument(
        "--small", type=int, default=8192, help="the start-up run's images (one shard)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="start-up runs (median)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of throughput")
    parser.add_argument("--shard-size", type=int, default=8192, help="the configs' default")
    parser.add_argument("--dir", help="where folders and caches go (default: a temp dir)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pld-scale-"))
    hook = base / "hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYTHONPATH"))}
    server, api_url = start_prefect_server(base / "prefect-server-home")
    env.update(PYTHONPATH=str(hook), PREFECT_HOME=str(base / "prefect-home"), PREFECT_API_URL=api_url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", OMP_NUM_THREADS="1")  # fmt: skip
    results = {"machine": f"{os.cpu_count()} CPUs", "startup": {}, "runs": []}
    small = make_folder(base / f"folder-{args.small}", args.small)
    for command in ("cache", "train"):
        runs = []
        for _ in range(args.repeat):
            work = base / f"work-{command}-{args.small}"
            work.mkdir(exist_ok=True)
            runs.append(measure(command, small, work, env, 5.0, args.shard_size))
        startup = statistics.median(r["time_to_first_step_s"] - r["listing_s"] for r in runs)
        results["startup"][command] = startup
        print(
            f"{command}: fixed start-up {startup:.1f} s (median of {args.repeat}, {args.small} images)"
        )
    for images in args.images:
        made = time.perf_counter()
        folder = make_folder(base / f"folder-{images}", images)
        row = {"images": images, "folder_s": time.perf_counter() - made,
               "listings_per_command": {}, "listing_s": {}, "time_to_first_step_s": {},
               "samples_per_s": {}, "within_target": {}, "ratio": {}}  # fmt: skip
        for command in ("cache", "train"):
            work = base / f"work-{command}-{images}"
            work.mkdir(exist_ok=True)
            m = measure(command, folder, work, env, args.window, args.shard_size)
            ratio = (m["time_to_first_step_s"] - results["startup"][command]) / m["listing_s"]
            row["listings_per_command"][command] = m["listings"]
            row["listing_s"][command] = m["listing_s"]
            row["time_to_first_step_s"][command] = m["time_to_first_step_s"]
            row["samples_per_s"][command] = m["samples_per_s"]
            row["ratio"][command] = ratio
            row["within_target"][command] = ratio <= 1.3
            print(
                f"{images:>9} images  {command:5}  listings {m['listings']}  listing "
                f"{m['listing_s']:6.1f} s  first {'shard' if command == 'cache' else 'step '} "
                f"{m['time_to_first_step_s']:6.1f} s  (first - start-up) / listing {ratio:4.2f} "
                f"(target <= 1.3)  {m['samples_per_s'] or float('nan'):8.0f} samples/s"
            )
        results["runs"].append(row)
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
