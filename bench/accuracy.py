"""Accuracy study on full Fashion-MNIST: which loss, temperature and K, with the seed spread.

One teacher (the demo's small ResNet, trained on all 60,000 training images) is cached
once as top-5 and once as full logits over the same replayable views; then the same small
student (the demo's tiny CNN) is trained from the cache with:

- ce, kd, dist, dkd, pld at their recipe defaults (sweep `losses`);
- kd at T = 1 (`kd-t1`): on the demo, kd at its default T = 4 fell far below ce;
- pld at K = 1 and 2 (`pld-k`; K = 5 is the default run in `losses`): how many classes
  PLD needs;
- kd from the full cache with dense targets (`kd-full`), against kd from the top-5 cache
  in `losses`: what top-K truncation costs KD;

each with the same seeds, evaluated on the 10,000 test images (top-1, ECE and the rest of
`pld_pipeline.student.run.eval_metrics`). Every stage is a Prefect flow (the demo's building blocks),
so a rerun reuses the finished teacher, caches and runs. Figures go to `--json`; the
docs/benchmarks.md table comes from `bench/accuracy_table.py`.

    .venv/bin/python bench/accuracy.py --json bench/results/accuracy.json   # about an hour

The default sizes and why they were chosen are in `SIZES_WHY` (measured by a pilot:
`--train-per-class 500 --teacher-epochs 1 --epochs 1 --views 1 --seeds 0`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Importing the CLI sets what Prefect reads at import (no telemetry, patience with the
# temporary server, library logs in the flow logs), as `pld` does.
import flows.cli  # noqa: E402, F401

SIZES_WHY = (
    "Sized for about one hour on an idle 2-core machine from a pilot (500 images per class, "
    "1 epoch each, every stage) and the demo's per-image costs on this machine when idle: "
    "teacher training about 1.3 ms per image on 2 threads (12 epochs x 60k: ~17 min; the 92 % "
    "target needs them, with milder crops, area 0.8-1), teacher forward for the caches about "
    "0.6 ms (2 caches x 5 views x 60k: ~6 min), a student step with decoding about 0.37 ms "
    "per image per core with two runs at once (27 runs x 5 epochs x 60k plus evaluation on "
    "10k: ~26 min). 5 student epochs of 60k images (2345 steps) are more steps than the "
    "demo's 20 epochs of 10k; one distinct cached view per student epoch."
)
TEACHER_TARGET = 92.0  # top-1 (%) the issue asks of the teacher
TEACHER_SCALE = (0.8, 1.0)  # the teacher's own random-resized-crop area range


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="workdir/accuracy", help="data, teacher, caches, runs")
    p.add_argument("--json", default="bench/results/accuracy.json", help="figures written here")
    p.add_argument(
        "--train-per-class", type=int, default=None, help="None = all 6000 (pilot: less)"
    )
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--epochs", type=int, default=5, help="epochs of every student run")
    p.add_argument("--views", type=int, default=5, help="cached replay views per image")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--threads", type=int, default=2,
        help="torch threads of the teacher's training and cache passes (1 on a loaded machine)",
    )  # fmt: skip
    p.add_argument(
        "--max-parallel", type=int, default=2,
        help="student runs at once, one torch thread each (runs stay reproducible: targets and "
        "order come from the cache and seeded generators)",
    )  # fmt: skip
    p.add_argument("--num-workers", type=int, default=1, help="DataLoader decoding processes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    from flows.cache_teacher import cache_teacher
    from flows.sweep import sweep
    from flows.train_student import train_run
    from pld_pipeline.configs.demo import DEMO_LOSSES, DemoConfig
    from pld_pipeline.configs.train import SweepConfig
    from pld_pipeline.demo import plan as demo_plan
    from pld_pipeline.demo.fashion_mnist import write_image_folder
    from pld_pipeline.student.run.run_dir import RunDir

    workdir = Path(args.workdir)
    demo = DemoConfig(
        workdir=str(workdir), train_per_class=args.train_per_class, val_per_class=None,
        teacher_epochs=args.teacher_epochs, student_epochs=args.epochs, num_views=args.views,
        k=5, temperatures=(1.0, 2.0, 4.0), num_workers=args.num_workers,
        max_parallel=args.max_parallel,
    )  # fmt: skip
    times: dict[str, float] = {}
    out: dict[str, Any] = {
        "sizes": {
            "train_images": None, "val_images": None, "teacher_epochs": args.teacher_epochs,
            "student_epochs": args.epochs, "views": args.views, "seeds": args.seeds,
            "k": demo.k, "temperatures": list(demo.temperatures),
            "teacher": demo.teacher_model, "student": demo.student_model,
            "batch_size": demo.batch_size, "lr": demo.lr, "max_parallel": args.max_parallel,
            "num_workers": args.num_workers, "threads": args.threads,
            "teacher_random_scale": list(TEACHER_SCALE), "view_scale": list(demo_plan.VIEW_SCALE),
        },
        "why": SIZES_WHY,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "times_s": times,
    }  # fmt: skip

    cpu: dict[str, float] = {}
    out["cpu_s"] = cpu  # CPU seconds of this process and its finished children (loaders)

    def stage(name: str, fn, *a):
        started, cpu_started = time.perf_counter(), cpu_seconds()
        value = fn(*a)
        times[name] = round(time.perf_counter() - started, 1)
        cpu[name] = round(cpu_seconds() - cpu_started, 1)
        print(f"[accuracy] {name}: {times[name]:.0f} s wall, {cpu[name]:.0f} s CPU", flush=True)
        save(args.json, out)
        return value

    data = workdir / "data" / "fashion-mnist"

    def write_data() -> str:
        for split, per_class in (("train", args.train_per_class), ("val", None)):
            write_image_folder(data, split, per_class, demo.seed, Path(demo.source))
        return str(data)

    root = stage("data", write_data)
    out["sizes"]["train_images"] = sum(1 for _ in (data / "train").rglob("*.png"))
    out["sizes"]["val_images"] = sum(1 for _ in (data / "val").rglob("*.png"))

    teacher_cfg = demo_plan.teacher_train_config(demo, root)
    teacher_cfg = teacher_cfg.model_copy(update={
        "student": teacher_cfg.student.model_copy(update={"random_scale": TEACHER_SCALE})
    })  # fmt: skip
    torch.set_num_threads(args.threads)

    def teacher() -> dict[str, Any]:
        done = RunDir(teacher_cfg.run_dir).finished_result(teacher_cfg)
        return done if done is not None else train_run(teacher_cfg, "teacher")

    result = stage("teacher", teacher)
    out["teacher"] = {k: result[k] for k in (
        "student", "best_top1", "final_top1", "final_top5", "final_nll", "final_ece",
        "final_confidence", "train_time_s")}  # fmt: skip
    out["teacher"]["meets_target"] = (result["best_top1"] or 0.0) >= TEACHER_TARGET
    if not out["teacher"]["meets_target"]:
        print(f"[accuracy] WARNING: teacher top-1 {result['best_top1']} is below "
              f"{TEACHER_TARGET}; raise --teacher-epochs", flush=True)  # fmt: skip

    topk_cfg = demo_plan.cache_config(demo, root)
    full_cfg = topk_cfg.model_copy(update={"format": "full", "output": str(workdir / "cache-full")})
    out["caches"] = {
        "topk": stage("cache_topk", cache_teacher, topk_cfg),
        "full": stage("cache_full", cache_teacher, full_cfg),
    }

    torch.set_num_threads(1)  # students: one thread per run, --max-parallel runs at once
    base = demo_plan.sweep_config(demo, root).base
    seeds = {"seed": list(args.seeds)}
    sweeps = {
        "losses": (base, {"loss.name": list(DEMO_LOSSES), **seeds}),
        "kd-t1": (base.model_copy(update={"loss": base.loss.model_copy(update={"name": "kd"})}),
                  {"loss.temperature": [1.0], **seeds}),
        "pld-k": (base, {"k": [1, 2], **seeds}),
        "kd-full": (base.model_copy(update={
            "cache": full_cfg.output, "target_form": "dense",
            "loss": base.loss.model_copy(update={"name": "kd"})}), seeds),
    }  # fmt: skip
    out["sweeps"] = {}
    for name, (sweep_base, grid) in sweeps.items():
        config = SweepConfig(
            base=sweep_base, grid=grid, sweep_dir=str(workdir / "sweeps" / name),
            max_parallel=args.max_parallel,
        )  # fmt: skip
        rows = stage(f"sweep_{name}", sweep, config)
        summary = json.loads((Path(config.sweep_dir) / "summary.json").read_text())
        out["sweeps"][name] = {"sweep_dir": config.sweep_dir, "rows": rows, "summary": summary}
        save(args.json, out)
    times["total"] = round(sum(v for k, v in times.items() if k != "total"), 1)
    save(args.json, out)
    print(f"[accuracy] done in {times['total']:.0f} s; figures in {args.json}", flush=True)
    return 0


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def save(path: str, data: dict[str, Any]) -> None:
    """Write the figures so far (atomically: a killed study leaves the last complete file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(target)


if __name__ == "__main__":
    sys.exit(main())
