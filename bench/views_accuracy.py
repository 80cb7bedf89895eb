"""Does training m views per decoded image cost accuracy? m = 4 against m = 1 at equal samples seen.

On the demo's data and cache (real Fashion-MNIST, 1000 training and 300 validation images
per class, a small ResNet teacher, 10 replay views, top-5): the demo's PLD student is
trained with views_per_image m = 1 for E epochs and with m = 4 for E / 4 epochs (the
same number of samples and optimizer steps; warmup scaled to the same samples), for
several seeds. The m = 4 run decodes each image a quarter as often and trains the four
views of an image in one batch. It "lands within the seed-to-seed spread" when its mean
best top-1 lies inside [min, max] of the m = 1 seeds.

    .venv/bin/python bench/views_accuracy.py --workdir workdir --json bench/results/views_accuracy.json

The teacher and cache of a `pld demo` run in the same workdir are reused (same
DemoConfig), otherwise they are built first (about 5 minutes on 2 CPU cores). Runs are
resumed/reused from workdir/views/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import storage
from pld_pipeline.configs.demo import DemoConfig
from pld_pipeline.demo import plan as demo_plan
from pld_pipeline.demo.fashion_mnist import write_image_folder
from pld_pipeline.student.run.run_dir import RunDir
from pld_pipeline.student.run.train import fit
from pld_pipeline.teacher.cache_build import build_shard, prepare_cache
from pld_pipeline.teacher.cache_report import finalize_cache


def prepare(config: DemoConfig) -> str:
    """The demo's data, teacher and cache (reused when already there)."""
    data = Path(config.workdir) / "data" / "fashion-mnist"
    write_image_folder(data, "train", config.train_per_class, config.seed, Path(config.source))
    write_image_folder(data, "val", config.val_per_class, config.seed, Path(config.source))
    teacher = demo_plan.teacher_train_config(config, str(data))
    if RunDir(teacher.run_dir).finished_result(teacher) is None:
        started = time.perf_counter()
        fit(teacher)
        print(f"teacher trained in {time.perf_counter() - started:.0f} s", flush=True)
    cache = demo_plan.cache_config(config, str(data))
    plan = prepare_cache(cache)
    for shard, views in plan.shard_tasks():
        build_shard(cache, shard, views)
    finalize_cache(cache)
    storage.open_cache(cache.output).validate()
    return str(data)


def run(config: DemoConfig, data: str, m: int, layout: str, seed: int, epochs: int) -> dict:
    """One PLD student at m views per image, epochs / m epochs (reused when finished)."""
    base = demo_plan.sweep_config(config, data).base
    optim = base.optim.model_copy(update={"warmup_epochs": base.optim.warmup_epochs / m})
    name = f"m{m}-seed{seed}" if m == 1 else f"m{m}-{layout}-seed{seed}"
    cfg = base.model_copy(update={
        "views_per_image": m, "views_layout": layout, "epochs": epochs // m, "seed": seed,
        "optim": optim, "run_dir": str(Path(config.workdir) / "views" / name),
    })  # fmt: skip
    done = RunDir(cfg.run_dir).finished_result(cfg)
    result = done if done is not None else fit(cfg).to_dict()
    return {
        "m": m, "layout": layout if m > 1 else "-", "seed": seed, "epochs": cfg.epochs,
        "best_top1": result["best_top1"], "final_top1": result["final_top1"],
        "samples_seen": result["samples_seen"], "train_time_s": result["train_time_s"],
    }  # fmt: skip


def spread_of(rows: list[dict]) -> dict:
    """Mean, std, min and max of best and final top-1 over seeds."""
    out: dict = {"train_time_s": statistics.mean(r["train_time_s"] for r in rows)}
    for key in ("best_top1", "final_top1"):
        tops = [r[key] for r in rows]
        out[key] = {"seeds": tops, "mean": statistics.mean(tops), "min": min(tops),
                    "max": max(tops), "std": statistics.stdev(tops) if len(tops) > 1 else 0.0}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the m = 1 runs")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--layouts", nargs="+", default=["spread", "same_batch"],
                        help="views_layout values tried for m > 1")  # fmt: skip
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    config = DemoConfig(workdir=args.workdir)
    data = prepare(config)
    arms = [(m, layout) for m in args.views for layout in (args.layouts if m > 1 else ["-"])]
    rows = []
    for seed in args.seeds:
        for m, layout in arms:
            row = run(config, data, m, layout if m > 1 else "spread", seed, args.epochs)
            rows.append(row)
            print(f"m={m} {row['layout']} seed={seed}: best top-1 {row['best_top1']:.2f}, final "
                  f"{row['final_top1']:.2f} ({row['epochs']} epochs, {row['samples_seen']} "
                  f"samples, {row['train_time_s']:.0f} s)", flush=True)  # fmt: skip
    summary = {
        f"m{m}-{layout}": spread_of([r for r in rows if r["m"] == m and r["layout"] == layout])
        for m, layout in arms
    }
    print("\n| views_per_image | layout | epochs | best top-1 per seed | mean +- std | final top-1 "
          "per seed | mean +- std | train time (s) |")  # fmt: skip
    print("| ---: | --- | ---: | --- | --- | --- | --- | ---: |")
    for (m, layout), s in zip(arms, summary.values(), strict=True):
        b, f = s["best_top1"], s["final_top1"]
        print(f"| {m} | {layout} | {args.epochs // m} | "
              f"{', '.join(f'{t:.2f}' for t in b['seeds'])} | {b['mean']:.2f} +- {b['std']:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in f['seeds'])} | {f['mean']:.2f} +- {f['std']:.2f} | "
              f"{s['train_time_s']:.0f} |")  # fmt: skip
    verdicts = {}
    if "m1--" in summary:
        for arm, s in summary.items():
            if arm == "m1--":
                continue
            for key in ("best_top1", "final_top1"):
                lo, hi = summary["m1--"][key]["min"], summary["m1--"][key]["max"]
                inside = lo <= s[key]["mean"] <= hi
                verdicts[f"{arm} {key}"] = inside
                print(f"{arm}: mean {key} {s[key]['mean']:.2f} within the m=1 seed range "
                      f"[{lo:.2f}, {hi:.2f}]: {'yes' if inside else 'NO'}")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "summary": summary, "within_m1_range": verdicts,
             "epochs_m1": args.epochs, "seeds": args.seeds}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
