"""Do students notice q8 records? The demo's sweep (PLD, KD) from an fp16 and a q8 cache.

The demo's pipeline on Fashion-MNIST (Debian's dataset-fashion-mnist): its teacher trained
once, then one teacher pass cached twice over the same replay views, with
`record_precision: fp16` and `q8`; then the demo's sweep for losses pld and kd over
--seeds from each cache, and per (precision, loss) the n, mean, sample std, min and max of
the final and best top-1 (`reports.seed_summary`, what `pld sweep` reports). The stages
call the library functions the flows' tasks call (`fit`, the cache pass steps), in this
process, so no Prefect server is needed.

    nice .venv/bin/python bench/precision_demo.py --json bench/results/precision_demo.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import storage
from pld_pipeline.configs.demo import DemoConfig
from pld_pipeline.configs.train import SweepConfig, expand_grid
from pld_pipeline.demo import plan as demo_plan
from pld_pipeline.demo.fashion_mnist import write_image_folder
from pld_pipeline.reports.seed_summary import summarize
from pld_pipeline.student.run.run_dir import RunDir
from pld_pipeline.student.run.train import fit
from pld_pipeline.teacher import cache_build, cache_report

PRECISIONS = ("fp16", "q8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="bench/results/precision_demo")
    p.add_argument("--json", default="bench/results/precision_demo.json")
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=300)
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10, help="epochs of every student run")
    p.add_argument("--views", type=int, default=5, help="cached replay views per image")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--losses", nargs="+", default=["pld", "kd"])
    p.add_argument("--max-parallel", type=int, default=2, help="student runs at once")
    return p.parse_args(argv)


def run_cache(config) -> dict[str, Any]:
    """The teacher pass's steps, in the flow's order (the replay check included)."""
    from pld_pipeline.teacher.replay_check import replay_check

    plan = cache_build.prepare_cache(config, producer="bench/precision_demo.py")
    for shard, views in plan.shard_tasks():
        cache_build.build_shard(config, shard, views)
    report = cache_report.finalize_cache(config).as_dict()
    report["replay_check"] = replay_check(config).as_dict()
    return report


def run_sweep(config: SweepConfig, max_parallel: int) -> list[dict[str, Any]]:
    """Every grid point trained (finished runs reused), as the sweep flow's rows."""
    import torch

    torch.set_num_threads(1)
    points = [(name, run.model_copy(update={"resume": True})) for name, run in expand_grid(config)]

    def train(point: tuple[str, Any]) -> dict[str, Any]:
        name, run = point
        done = RunDir(run.run_dir).finished_result(run)
        result = done if done is not None else fit(run).to_dict()
        return {
            "run": name, "loss.name": run.loss.name, "seed": run.seed,
            "best_top1": result["best_top1"], "final_top1": result["final_top1"],
            "final_top5": result["final_top5"], "final_nll": result["final_nll"],
            "final_ece": result["final_ece"], "final_confidence": result["final_confidence"],
            "time_s": result["train_time_s"],
        }  # fmt: skip

    with ThreadPoolExecutor(max_parallel) as pool:
        return list(pool.map(train, points))


def main(argv: list[str] | None = None) -> int:
    import logging

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    workdir = Path(args.workdir)
    demo = DemoConfig(
        workdir=str(workdir), train_per_class=args.train_per_class,
        val_per_class=args.val_per_class, teacher_epochs=args.teacher_epochs,
        student_epochs=args.epochs, num_views=args.views, batch_size=args.batch_size,
        losses=("pld", "kd"), max_parallel=args.max_parallel,
    )  # fmt: skip
    times: dict[str, float] = {}
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "sizes": vars(args), "times_s": times,
    }  # fmt: skip
    start = time.perf_counter()
    data = workdir / "data" / "fashion-mnist"
    write_image_folder(data, "train", args.train_per_class, demo.seed, Path(demo.source))
    write_image_folder(data, "val", args.val_per_class, demo.seed, Path(demo.source))
    root = str(data)
    teacher_cfg = demo_plan.teacher_train_config(demo, root)
    import torch

    torch.set_num_threads(2)
    if RunDir(teacher_cfg.run_dir).finished_result(teacher_cfg) is None:
        fit(teacher_cfg)
    out["teacher"] = json.loads((Path(teacher_cfg.run_dir) / "result.json").read_text())
    times["teacher"] = round(time.perf_counter() - start, 1)

    base_cache = demo_plan.cache_config(demo, root)
    out["caches"], out["sweeps"] = {}, {}
    for precision in PRECISIONS:
        start = time.perf_counter()
        cache = base_cache.model_copy(update={
            "record_precision": precision, "output": str(workdir / f"cache-{precision}"),
        })  # fmt: skip
        torch.set_num_threads(2)
        report = run_cache(cache)
        out["caches"][precision] = {
            k: report[k] for k in ("bytes_per_record", "disk_mb", "tail_overall", "replay_check")
        }
        times[f"cache_{precision}"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        sweep = demo_plan.sweep_config(demo, root)
        base = sweep.base.model_copy(update={"cache": cache.output})
        config = SweepConfig(
            base=base, grid={"loss.name": list(args.losses), "seed": list(args.seeds)},
            sweep_dir=str(workdir / f"sweep-{precision}"), max_parallel=args.max_parallel,
        )  # fmt: skip
        rows = run_sweep(config, args.max_parallel)
        out["sweeps"][precision] = {"rows": rows, "summary": summarize(rows, list(config.grid))}
        times[f"sweep_{precision}"] = round(time.perf_counter() - start, 1)
    # Same views: the two caches differ in their log-probs only.
    a = storage.open_cache(workdir / "cache-fp16").load_view(0)
    b = storage.open_cache(workdir / "cache-q8").load_view(0)
    out["same_views"] = bool((a.crop == b.crop).all() and (a.flip == b.flip).all())
    out["agreement"] = compare(out["sweeps"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    for row in out["agreement"]:
        print(json.dumps(row))
    return 0


def compare(sweeps: dict[str, Any]) -> list[dict[str, Any]]:
    """Per loss and metric: both means and spreads, and whether the means agree within the
    spread (|mean fp16 - mean q8| <= the larger sample std)."""
    rows = []
    groups = {
        p: {g["point"]["loss.name"]: g["stats"] for g in sweeps[p]["summary"]["groups"]}
        for p in PRECISIONS
    }
    for loss in groups["fp16"]:
        for metric in ("final_top1", "best_top1"):
            fp16, q8 = groups["fp16"][loss][metric], groups["q8"][loss][metric]
            spread = max(fp16["std"] or 0.0, q8["std"] or 0.0)
            rows.append({
                "loss": loss, "metric": metric,
                "fp16": {k: fp16[k] for k in ("n", "mean", "std", "min", "max")},
                "q8": {k: q8[k] for k in ("n", "mean", "std", "min", "max")},
                "difference": q8["mean"] - fp16["mean"],
                "agree_within_spread": abs(q8["mean"] - fp16["mean"]) <= spread,
            })  # fmt: skip
    return rows


if __name__ == "__main__":
    sys.exit(main())
