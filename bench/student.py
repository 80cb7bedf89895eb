"""Benchmark of student training: targets read from the cache vs. the teacher run online.

Same student, same images, same views, same loss, in one run: a teacher pass writes a
replay cache once, then `pld_pipeline.train.fit` trains one epoch at a time, alternating
the cached mode (targets gathered from the in-memory view slab) and the online mode (the
teacher forward on every batch, at the same crop). Each mode is timed over several rounds;
the first round is a warm-up and is not counted. Reported:

- epoch time of each mode (median over the counted rounds) and their ratio online / cached
  (target >= 1.5 for a ResNet-50 teacher and a ResNet-18 student: by FLOPs, a ResNet-50
  forward is about 4.1 GFLOPs and a ResNet-18 forward + backward about 5.5, so at most ~1.75);
- the cached mode's target overhead per step: time spent gathering a batch's targets from
  the slab and moving them to the device, as a share of the step time (target <= 5%).

The teacher is randomly initialised (FLOPs, not accuracy, decide the timing) and saved to a
checkpoint so the pass and the online mode use the same weights. Images are JPEGs with
smooth random content. The same command runs on CPU and CUDA:

    .venv/bin/python bench/student.py                       # CPU: 2048 images, batch 64
    .venv/bin/python bench/student.py --device cuda         # CUDA: 8192 images, batch 256, bf16
    .venv/bin/python bench/student.py --json bench/results/student.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pld_pipeline.cache_build import build_shard, prepare_cache  # noqa: E402
from pld_pipeline.configs.cache import CacheConfig, TeacherConfig  # noqa: E402
from pld_pipeline.configs.train import TrainConfig  # noqa: E402
from pld_pipeline.models import create_model  # noqa: E402
from pld_pipeline.train import fit  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_images(root: Path, n: int, side: int, classes: int, seed: int = 0) -> Path:
    """n JPEGs of about side x side px (smooth colour waves plus noise), in `classes` folders."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = (int(side * rng.uniform(0.8, 1.25)) for _ in range(2))
        yy, xx = np.mgrid[0:h, 0:w]
        phase, freq = rng.uniform(0, 6.3, 3), rng.uniform(0.02, 0.2, 3)
        img = np.stack(
            [127 + 90 * np.sin(freq[c] * (xx + 0.6 * yy) + phase[c]) for c in range(3)], -1
        )
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(
            root / f"class_{i % classes:03d}" / f"img_{i:06d}.jpg", quality=90
        )
    return root


def teacher_config(args: argparse.Namespace, checkpoint: Path) -> TeacherConfig:
    return TeacherConfig(
        name=args.teacher, checkpoint=str(checkpoint), num_classes=args.classes,
        input_size=args.size, mean=MEAN, std=STD, interpolation="bilinear", crop_pct=0.875,
    )  # fmt: skip


def build_cache(
    args: argparse.Namespace, images: Path, work: Path
) -> tuple[Path, TeacherConfig, float]:
    """The teacher pass: one replay view of every image, top-K at the student's size."""
    torch.manual_seed(0)
    teacher = create_model(args.teacher, num_classes=args.classes)
    checkpoint = work / "teacher.pt"
    torch.save(teacher.state_dict(), checkpoint)
    tconf = teacher_config(args, checkpoint)
    config = CacheConfig(
        dataset_root=str(images), teacher=tconf, views={"mode": "replay", "num_views": 1},
        format="topk", k=args.k, temperatures=(1.0, 4.0), shard_size=1024,
        output=str(work / "cache.zarr"), batch_size=args.batch, num_workers=args.workers,
        device=args.device, replay_check_samples=0,
    )  # fmt: skip
    started = time.perf_counter()
    plan = prepare_cache(config)
    for shard, views in plan.shard_tasks():
        build_shard(config, shard, views)
    return Path(config.output), tconf, time.perf_counter() - started


def run_epoch(args, cache: Path, images: Path, run_dir: Path, online: TeacherConfig | None) -> dict:  # noqa: ANN001
    config = TrainConfig(
        cache=str(cache), dataset_root=str(images), run_dir=str(run_dir),
        student={"name": args.student, "image_size": args.size},
        loss={"name": args.loss}, optim={"name": "sgd", "lr": 0.05},
        epochs=1, batch_size=args.batch, k=args.k, online_teacher=online, device=args.device,
        amp=args.amp, num_workers=args.workers, log_every=10_000,
    )  # fmt: skip
    return fit(config).history[0]


def main(argv: list[str] | None = None) -> dict:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--images", type=int, help="default 2048 on CPU, 8192 on CUDA")
    parser.add_argument("--batch", type=int, help="global batch; default 64 on CPU, 256 on CUDA")
    parser.add_argument("--size", type=int, default=64, help="student and teacher input side")
    parser.add_argument("--source-side", type=int, default=80, help="source image side (px)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--loss", default="pld")
    parser.add_argument("--amp", default="auto", help="auto = bf16 on CUDA, none on CPU")
    parser.add_argument("--workers", type=int, help="DataLoader workers; default min(8, cpus - 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (cached, online) epochs")
    parser.add_argument("--warmup", type=int, default=1, help="first rounds not counted")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.images = args.images or (8192 if on_cuda else 2048)
    args.batch = args.batch or (256 if on_cuda else 64)
    args.workers = (
        args.workers if args.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))
    )
    if args.rounds <= args.warmup:
        parser.error("--rounds must exceed --warmup")
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="pld-bench-student-") as tmp:
        work = Path(tmp)
        images = make_images(work / "images", args.images, args.source_side, args.classes)
        cache, tconf, pass_s = build_cache(args, images, work)
        print(f"teacher pass: {args.images} images in {pass_s:.1f} s", flush=True)
        epochs: dict[str, list[dict]] = {"cached": [], "online": []}
        for r in range(args.rounds):
            # Alternate the order so slow drifts of the machine hit both modes alike.
            order = ("cached", "online") if r % 2 == 0 else ("online", "cached")
            for mode in order:
                rec = run_epoch(args, cache, images, work / f"run-{mode}-{r}",
                                tconf if mode == "online" else None)  # fmt: skip
                epochs[mode].append(rec)
                print(f"round {r} {mode:6s}: epoch {rec['epoch_time_s']:.2f} s, "
                      f"data wait {rec['data_time_s']:.2f} s, targets {rec['target_time_s']:.4f} s, "
                      f"{rec['images_per_s']:.0f} img/s", flush=True)  # fmt: skip

    counted = {m: recs[args.warmup :] for m, recs in epochs.items()}
    med = {m: statistics.median(r["epoch_time_s"] for r in recs) for m, recs in counted.items()}
    cached = counted["cached"]
    steps = cached[0]["steps"]
    share = statistics.median(r["target_time_s"] / r["epoch_time_s"] for r in cached)
    per_step_ms = statistics.median(1000 * r["target_time_s"] / r["steps"] for r in cached)
    result = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if on_cuda else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "teacher": args.teacher, "student": args.student, "size": args.size, "images": args.images,
        "batch": args.batch, "k": args.k, "loss": args.loss, "workers": args.workers,
        "amp": args.amp, "rounds_counted": args.rounds - args.warmup,
        "teacher_pass_s": pass_s,
        "epoch_s_cached": med["cached"], "epoch_s_online": med["online"],
        "speedup_online_over_cached": med["online"] / med["cached"],
        "steps_per_epoch": steps,
        "step_ms_cached": 1000 * med["cached"] / steps,
        "target_ms_per_step_cached": per_step_ms,
        "target_share_of_step_cached": share,
        "data_wait_share_cached": statistics.median(r["data_time_s"] / r["epoch_time_s"] for r in cached),
        "targets": {"speedup_min": 1.5, "target_share_max": 0.05},
        "all_epochs": {m: [{k: r[k] for k in ("epoch_time_s", "data_time_s", "target_time_s", "images_per_s")}
                           for r in recs] for m, recs in epochs.items()},
    }  # fmt: skip
    result["met"] = {
        "speedup": result["speedup_online_over_cached"] >= 1.5,
        "target_share": share <= 0.05,
    }
    print(
        f"\n{args.student} <- {args.teacher} at {args.size}px, {args.images} images, batch "
        f"{args.batch}, {args.device}\n"
        f"  epoch, cached targets : {med['cached']:.2f} s (median of {len(cached)})\n"
        f"  epoch, online teacher : {med['online']:.2f} s\n"
        f"  online / cached       : {result['speedup_online_over_cached']:.2f}x (target >= 1.5)\n"
        f"  target gather per step: {per_step_ms:.3f} ms = {100 * share:.3f}% of the step "
        f"(target <= 5%)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
