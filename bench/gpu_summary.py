"""bench/gpu.sh's helpers: the machine's description, test and demo records, and the summary table.

    python bench/gpu_summary.py env --json bench/results/gpu-env.json
    python bench/gpu_summary.py junit LOG.xml --json bench/results/gpu-tests.json
    python bench/gpu_summary.py demo WORKDIR --seconds S --json bench/results/gpu-demo.json
    python bench/gpu_summary.py table bench/results      # reads gpu-*.json, prints the table

`table` prints one markdown row per section (status, seconds, headline figures), the
figures the "GPU" table of docs/benchmarks.md asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _write(data: dict[str, Any], path: str | None) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(text, end="")


def env(args: argparse.Namespace) -> int:
    """The card, driver, library versions; fails without CUDA or without a dependency."""
    import torch
    import torchvision

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())  # fmt: skip
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)  # fmt: skip
        info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
    missing = []
    for name in ("numpy", "PIL", "zarr", "numcodecs", "dask", "distributed", "prefect",
                 "prefect_dask", "pydantic", "skimage"):  # fmt: skip
        try:
            module = __import__(name)
            info[f"version_{name}"] = getattr(module, "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - reported, and the section fails
            missing.append(f"{name}: {type(exc).__name__}: {exc}")
    info["import_errors"] = missing
    _write(info, args.json)
    return 0 if info["cuda_available"] and not missing else 1


def junit(args: argparse.Namespace) -> int:
    """Counts of a pytest junit XML file."""
    root = ET.parse(args.path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    _write(counts, args.json)
    return 0


def demo(args: argparse.Namespace) -> int:
    """The quick demo's results: the teacher's and every student's best top-1."""
    work = Path(args.workdir)
    teacher = json.loads((work / "teacher" / "result.json").read_text())
    students = {}
    for result in sorted((work / "sweep").glob("*/result.json")):
        r = json.loads(result.read_text())
        students[r["loss"]] = {"best_top1": r["best_top1"], "train_time_s": r["train_time_s"]}
    _write({"seconds": args.seconds, "teacher_best_top1": teacher["best_top1"],
            "students": students}, args.json)  # fmt: skip
    return 0 if students else 1


def _get(data: Any, *path: Any, default: Any = None) -> Any:
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return default
    return data


def _loss_rows(losses: dict, batch: int, classes: int) -> str:
    for size in losses.get("sizes", []):
        if (size["B"], size["C"]) == (batch, classes):
            ms = {r["name"]: r["median_ms"] for r in size["rows"]}
            kd = ms.get("kd")
            pld = {n: v for n, v in ms.items() if n.startswith("pld compact K=100")}
            dense = ms.get("pld dense (from raw teacher logits)") or next(
                (v for n, v in ms.items() if n.startswith("pld dense")), None)  # fmt: skip
            parts = [f"kd {kd:.3f} ms" if kd else "kd ?"]
            parts += [f"pld K=100 {v:.3f} ms" for v in pld.values()]
            parts += [f"pld dense {dense:.3f} ms" if dense else ""]
            return ", ".join(p for p in parts if p)
    return "no figures"


def headline(name: str, data: dict) -> str:
    """One line of the section's key figures."""
    if not data:
        return ""
    if name == "env":
        return (f"{data.get('device_name', 'no CUDA device')}, torch {data.get('torch')}, "
                f"CUDA {data.get('cuda')}, {data.get('machine')}")  # fmt: skip
    if name == "cuda-tests":
        return f"{data.get('passed')} passed, {data.get('failures', 0) + data.get('errors', 0)} failed, {data.get('skipped')} skipped"
    if name == "losses":
        return (f"B=1024 C=1000: {_loss_rows(data, 1024, 1000)}; "
                f"C=21843: {_loss_rows(data, 1024, 21843)}")  # fmt: skip
    if name == "teacher":
        return (f"{data.get('model')} {data.get('amp')}: bare {data.get('bare_forward_images_per_s', 0):,.0f} img/s, "
                f"pass {data.get('pass_decoding_excluded_images_per_s', 0):,.0f} img/s (ratio "
                f"{data.get('paired_ratio_decoding_excluded', 0):.3f}), with decoding "
                f"{data.get('pass_decoding_included_images_per_s', 0):,.0f} img/s")  # fmt: skip
    if name == "student":
        p = data.get("paired", {})
        return (f"online/cached {p.get('speedup_median_of_steps', 0):.2f}x, step "
                f"{p.get('step_ms_cached', 0):.1f} vs {p.get('step_ms_online', 0):.1f} ms, "
                f"target share {100 * p.get('target_share_of_step_cached', 0):.2f}%")  # fmt: skip
    if name == "student-data":
        cpu = data.get("images_per_s", {})
        gpu = _get(data, "gpu", "images_per_s", default={})
        crop = _get(data, "cpu_crop_on_cuda", "worker_images_per_s", default={})
        exact = _get(data, "gpu", "cpu_crop_on_cuda_images_per_s", default={})

        def rates(d: dict) -> str:
            return "/".join(f"{d.get(m, 0):.0f}" for m in ("1", "2", "4"))

        return (f"CPU per worker m=1/2/4: {rates(cpu)} samples/s (decode-only "
                f"{data.get('decode_only_images_per_s', 0):.0f}, PIL "
                f"{data.get('decode_only_pil_images_per_s', 0):.0f}); cpu-crop-on-cuda per "
                f"worker {rates(crop)}, whole chain {rates(exact)}; GPU decode m=1/2/4: "
                f"{rates(gpu)}; nvJPEG "
                f"{_get(data, 'gpu', 'nvjpeg_decode_only_images_per_s', default=0):.0f} img/s, "
                f"mean |diff| {_get(data, 'gpu', 'nvjpeg_vs_cpu_mean_abs_diff', default=0):.2f}")  # fmt: skip
    if name == "demo":
        s = data.get("students", {})
        return (f"{data.get('seconds', 0):.0f} s end to end; teacher {data.get('teacher_best_top1')}; "
                + ", ".join(f"{k} {v['best_top1']:.1f}" for k, v in s.items()))  # fmt: skip
    return ""


def table(args: argparse.Namespace) -> int:
    """The summary: one markdown row per section, from gpu-sections.json and its JSON file."""
    results = Path(args.results)
    sections = json.loads((results / "gpu-sections.json").read_text())
    files = {"env": "gpu-env.json", "cuda-tests": "gpu-tests.json", "losses": "gpu-losses.json",
             "teacher": "gpu-teacher.json", "student": "gpu-student.json",
             "student-data": "gpu-student-data.json", "demo": "gpu-demo.json"}  # fmt: skip
    print("\n| section | status | s | figures |\n| --- | --- | ---: | --- |")
    for s in sections:
        path = results / files.get(s["name"], "-")
        data = {}
        if path.is_file() and path.stat().st_mtime >= s["started"] - 1:  # this run's file
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = {}
        try:
            figures = headline(s["name"], data)
        except Exception as exc:  # noqa: BLE001 - a summary must not hide the run's results
            figures = f"(figures unreadable: {exc})"
        print(f"| {s['name']} | {s['status']} | {s['seconds']} | {figures} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env")
    p.add_argument("--json")
    p = sub.add_parser("junit")
    p.add_argument("path")
    p.add_argument("--json")
    p = sub.add_parser("demo")
    p.add_argument("workdir")
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--json")
    p = sub.add_parser("table")
    p.add_argument("results")
    args = parser.parse_args(argv)
    return {"env": env, "junit": junit, "demo": demo, "table": table}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
