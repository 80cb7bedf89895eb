"""Benchmark of the losses: forward + backward time and peak memory on the same inputs.

    .venv/bin/python bench/losses.py [--sizes 256x1000 1024x21843] [--json PATH]

For each size (B x C) it times, on one set of inputs: KD, DIST, DKD (dense teacher),
dense PLD, compact PLD from a top-K cache (K = 10, 50, 100, C-1), a naive PLD (argsort +
logcumsumexp through autograd) and, for reference, one argsort of the teacher logits.
It prints medians, ratios to KD and peak memory, then checks the targets. Uses CUDA when
present, CPU otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import median_time, peak_memory

from pld_pipeline.losses import CachedTargets, dist_loss, dkd_loss, kd_loss, pld_loss


def naive_pld(student, teacher, labels, temperature=1.0):
    """PLD the obvious way: sort, gather, logcumsumexp, plain autograd."""
    forced = teacher.scatter(1, labels[:, None], math.inf)  # the label ranks first
    order = torch.argsort(forced, dim=1, descending=True)
    weight = torch.softmax(teacher / temperature, dim=1).gather(1, order)
    ranked = student.gather(1, order)
    denom = torch.logcumsumexp(ranked.flip(1), dim=1).flip(1)
    return (weight * (denom - ranked)).sum(dim=1).mean()


def make_inputs(batch: int, classes: int, device: torch.device, seed: int = 0):
    """Student logits, a peaked teacher, labels (teacher top-1 right ~80% of the time)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    teacher = 2.0 * torch.randn(batch, classes, generator=gen)
    hit = torch.rand(batch, generator=gen) < 0.8
    teacher[hit, labels[hit]] += 8.0
    student = torch.randn(batch, classes, generator=gen)
    return (
        student.to(device).requires_grad_(True),
        teacher.to(device),
        labels.to(device),
    )


def cache_of(teacher: torch.Tensor, labels: torch.Tensor, k: int, temps=(1.0, 4.0)):
    """The compact cache of `teacher` at top-k, as the teacher pass would write it."""
    logp = torch.log_softmax(teacher, dim=1)
    top_logp, top_idx = logp.topk(k, dim=1)
    lse = torch.stack([torch.logsumexp(teacher / t, dim=1) for t in temps], dim=1)
    return CachedTargets(
        top_idx, top_logp.half(), lse, temps, teacher.gather(1, labels[:, None])[:, 0]
    )


def compact_ks(classes: int) -> list[int]:
    """The cache sizes timed: K = 10, 50, 100 (those below C - 1) and the full K = C - 1."""
    return sorted({k for k in (10, 50, 100) if k < classes - 1} | {classes - 1})


def cases(student, teacher, labels) -> dict[str, Callable[[], object]]:
    classes = teacher.shape[1]

    def step(loss_fn, targets, **kw):
        def run():
            loss_fn(student, targets, labels, **kw).backward()
            student.grad = None

        return run

    out = {
        "kd": step(kd_loss, teacher, temperature=4.0),
        "dist": step(dist_loss, teacher, temperature=1.0),
        "dkd": step(dkd_loss, teacher, temperature=4.0),
        "argsort (teacher, fwd only)": lambda: torch.argsort(teacher, dim=1, descending=True),
        "pld dense": step(pld_loss, teacher),
    }
    for k in compact_ks(classes):
        out[f"pld compact K={k}"] = step(pld_loss, cache_of(teacher, labels, k))
    out["pld naive (sort + logcumsumexp)"] = step(naive_pld, teacher)
    return out


def bench_size(batch: int, classes: int, device: torch.device, budget_s: float) -> list[dict]:
    """Time every case round-robin, so that load from other processes hits all cases
    alike: each round runs each case once to warm up (allocator state left by the case
    before) and then three times, keeping the median. Then measure peak memory."""
    student, teacher, labels = make_inputs(batch, classes, device)
    fns = cases(student, teacher, labels)
    once = {name: median_time(fn, device, repeats=1, warmup=1) for name, fn in fns.items()}
    rounds = max(3, min(100, int(budget_s * len(fns) / max(4 * sum(once.values()), 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_time(fn, device, repeats=3, warmup=1))
    rows = []
    for name, fn in fns.items():
        rows.append(
            {
                "name": name,
                "B": batch,
                "C": classes,
                "median_ms": statistics.median(times[name]) * 1e3,
                "min_ms": min(times[name]) * 1e3,
                "repeats": rounds,
                "peak_bytes": peak_memory(fn, device),
            }
        )
    kd = rows[0]
    for row in rows:
        row["ratio_to_kd"] = row["median_ms"] / kd["median_ms"]
        row["peak_above_kd_bc_fp32"] = (row["peak_bytes"] - kd["peak_bytes"]) / (
            4 * batch * classes
        )
    return rows


def check_targets(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """The issue's targets, as (what, met, figures)."""
    by = {r["name"]: r for r in rows}
    kd, dense, naive = by["kd"], by["pld dense"], by["pld naive (sort + logcumsumexp)"]
    argsort = by["argsort (teacher, fwd only)"]
    classes = kd["C"]
    out = []
    for k in compact_ks(classes):
        r = by[f"pld compact K={k}"]
        limit = 2.0 if k == classes - 1 else 1.2
        out.append(
            (
                f"compact K={k} time <= {limit}x KD",
                r["ratio_to_kd"] <= limit,
                f"{r['ratio_to_kd']:.2f}x",
            )
        )
        if k <= 100:
            out.append(
                (
                    f"compact K={k} peak <= KD + 3 [B,C] fp32",
                    r["peak_above_kd_bc_fp32"] <= 3.0,
                    f"{r['peak_above_kd_bc_fp32']:+.2f}",
                )
            )
    ref = argsort["median_ms"] + kd["median_ms"]
    out.append(
        (
            "dense <= 1.2x (argsort + KD)",
            dense["median_ms"] <= 1.2 * ref,
            f"{dense['median_ms'] / ref:.2f}x",
        )
    )
    speedup = naive["median_ms"] / dense["median_ms"]
    out.append(("dense >= 5x faster than naive", speedup >= 5.0, f"{speedup:.1f}x"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["256x1000", "1024x21843"],
        help="B x C sizes (default: ImageNet-1k and the ImageNet-21k head)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="seconds of timed calls per case (5 to 200 rounds)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 is steadier on a loaded machine",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": round(os.getloadavg()[0], 2),
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
    }
    print(f"# {env}")
    results = {"env": env, "sizes": []}
    for size in args.sizes:
        batch, classes = (int(v) for v in size.lower().split("x"))
        rows = bench_size(batch, classes, device, args.budget)
        targets = check_targets(rows)
        results["sizes"].append(
            {
                "B": batch,
                "C": classes,
                "rows": rows,
                "targets": [{"target": t, "met": met, "value": v} for t, met, v in targets],
                "targets_apply": device.type == "cpu" and (batch, classes) == (256, 1000),
            }
        )
        print(f"\n## B={batch}, C={classes} (fwd+bwd medians)\n")
        print("| loss | median ms | x KD | min ms | peak MiB | peak - KD, in [B,C] fp32 |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(
                f"| {r['name']} | {r['median_ms']:.3f} | {r['ratio_to_kd']:.2f} | {r['min_ms']:.3f} | "
                f"{r['peak_bytes'] / 2**20:.1f} | {r['peak_above_kd_bc_fp32']:+.2f} |"
            )
        print()
        # The issue sets its targets on CPU at B=256, C=1000; elsewhere they are shown as
        # figures to compare, not judged.
        judged = device.type == "cpu" and (batch, classes) == (256, 1000)
        for t, met, v in targets:
            verdict = ("met" if met else "MISSED") if judged else "for reference"
            print(f"- {verdict}: {t} ({v})")
    env["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    print(f"\n# load average at start {env['loadavg_at_start']}, at end {env['loadavg_at_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
