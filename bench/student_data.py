"""Benchmark of the student's input pipeline alone: decode, crop and resize, flip, normalise, targets.

No model. In one process with one thread (as a DataLoader worker runs), in one run:

- decode-only: every JPEG decoded once, by the default decoder (torchvision's
  libjpeg-turbo, `decoding.decode_rgb`) and by PIL, with a pixel comparison of the two;
  the default decoder's rate is the pipeline's limit;
- the pipeline for views_per_image m = 1, 2, 4: `StudentViewDataset` (one decode, m cached views
  replayed: crop, resize to --size, flip), `collate_views`, `gather_targets` from m view
  slabs (top-100 of 1000 classes), `normalize_batch`; decodes per trained sample (counted,
  not timed) and two rates: per worker process (`images_per_s`: what one DataLoader worker
  delivers, i.e. decode, crop, resize, flip and collate; samples/s) and the whole chain in
  one process (`pipeline_images_per_s`: plus the target gather and the normalisation,
  which a CUDA run does on the GPU);
- the workers' part of `decode: cpu-crop-on-cuda` for each m (`cpu_crop_on_cuda`): one
  decode per image, the view boxes and the collate; the views are cut on the GPU, exactly
  as `replay_view` would (the full image, about 560 KB, crosses the worker pipe instead of
  m views of 150 KB: equal bytes at m = 4);
- with --device cuda (default when a GPU is present): the same with `decode: cuda`
  (workers' part: read bytes; nvJPEG batch decode, views cut on the GPU, targets and
  normalisation on the GPU, one thread), the whole chain of `cpu-crop-on-cuda` in one
  process, nvJPEG's decode-only rate, and how far nvJPEG's pixels are from the CPU
  decoder's.

The figures are interleaved over --repeat rounds and the median is reported. Targets (from
the issue), on the per-worker rate of each mode: at m = 4, at least 2x the samples/s of m = 1, and
within 1.3x of the decode-only limit divided by m (time per sample <= 1.3 x decode time /
m, i.e. samples/s >= m x decode-only rate / 1.3).

    .venv/bin/python bench/student_data.py --json bench/results/student_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from photos import make_folder

import storage
from pld_pipeline.datasets import ImageFolderDataset
from pld_pipeline.decoding import jpeg_header, read_bytes
from pld_pipeline.rgb import load_rgb
from pld_pipeline.student.data.cached_dataset import (
    EpochViewSampler,
    ShuffleSampler,
    StoredViews,
    StudentViewDataset,
    collate_views,
    gather_targets,
)
from pld_pipeline.views import normalize_batch, sample_view
from storage.synthetic import make_manifest, make_records

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VIEW_SEED = 0


def build_cache(images: ImageFolderDataset, path: Path, num_views: int, classes: int, k: int):
    """A replay cache of `images`: synthetic top-k targets, real boxes (sample_view of the
    JPEG's size) so every view replays inside its image."""
    n = len(images)
    manifest = make_manifest(
        num_samples=n, num_classes=classes, k=k, num_views=num_views, shard_size=n,
        temperatures=(1.0,), dataset_fingerprint=images.fingerprint(),
    )  # fmt: skip
    labels = images.labels.astype(np.int32)
    writer = storage.create(path, manifest, images.keys, labels)
    sizes = [jpeg_header(read_bytes(images.path(i)))[1:] for i in range(n)]
    for v in range(num_views):
        records = make_records(manifest, v, 0, n, labels)
        boxes = [sample_view("replay", VIEW_SEED, v, i, h, w) for i, (h, w) in enumerate(sizes)]
        records["crop"] = np.array([c for c, _ in boxes], dtype=np.int64)
        records["flip"] = np.array([f for _, f in boxes], dtype=bool)
        records["hw"] = np.array(sizes, dtype=np.int64)
        writer.write_shard(v, 0, records)
    reader = storage.open_cache(path)
    return [reader.load_view(v) for v in range(num_views)]


class Counting(StudentViewDataset):
    """StudentViewDataset counting its decodes."""

    decodes = 0

    def __getitem__(self, item):
        Counting.decodes += 1
        return super().__getitem__(item)


def decode_only(images: ImageFolderDataset, decoder: str) -> float:
    """Seconds to decode every file once (uint8 [3, H, W] tensors)."""
    started = time.perf_counter()
    for i in range(len(images)):
        if decoder == "pil":
            TF.pil_to_tensor(load_rgb(images.path(i)))
        else:
            images.load_tensor(i)
    return time.perf_counter() - started


def decoders_agree(images: ImageFolderDataset) -> bool:
    """True when the default decoder and PIL give equal pixels for every file."""
    return all(
        torch.equal(images.load_tensor(i), TF.pil_to_tensor(load_rgb(images.path(i))))
        for i in range(len(images))
    )


def epoch_loader(dataset, slabs, m: int, batch: int, collate) -> torch.utils.data.DataLoader:
    """One epoch over every image with the first m cached views, in this process."""
    sampler = EpochViewSampler(ShuffleSampler(np.arange(len(dataset)), seed=0))
    sampler.set_epoch(0, [StoredViews(s.crop, s.flip) for s in slabs[:m]])
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch // m, sampler=sampler, num_workers=0, collate_fn=collate,
        drop_last=True,
    )  # fmt: skip


def cpu_pipeline(images, slabs, m: int, batch: int, size: int) -> dict:
    """One epoch of the CPU pipeline at m views per image, in this process."""
    loader = epoch_loader(Counting(images, size), slabs, m, batch, collate_views)
    Counting.decodes = 0
    samples, worker_s, main_s = 0, 0.0, 0.0
    started = t = time.perf_counter()
    for b in loader:
        t_main = time.perf_counter()
        worker_s += t_main - t
        gather_targets(slabs[:m], b.index.numpy(), "compact", "cpu", slot=b.slot.numpy())
        normalize_batch(b.images, MEAN, STD)
        samples += len(b.index)
        t = time.perf_counter()
        main_s += t - t_main
    wall = time.perf_counter() - started
    return {"wall_s": wall, "samples": samples, "decodes": Counting.decodes,
            "worker_s": worker_s, "main_s": main_s}  # fmt: skip


def crop_on_device_workers(images, slabs, m: int, batch: int, size: int) -> dict:
    """One epoch of the workers' part of `decode: cpu-crop-on-cuda` (decode, view boxes,
    collate; the views are cut on the GPU), in this process."""
    from pld_pipeline.student.data.gpu_decode import DecodedViewDataset, collate_encoded

    loader = epoch_loader(DecodedViewDataset(images, size), slabs, m, batch, collate_encoded)
    samples, decodes = 0, 0
    started = time.perf_counter()
    for b in loader:
        samples += len(b.index)
        decodes += sum(it.decoded is not None for it in b.images)
    return {"wall_s": time.perf_counter() - started, "samples": samples, "decodes": decodes}


def gpu_pipeline(
    images, slabs, m: int, batch: int, size: int, device: torch.device, decode: str = "cuda"
) -> dict:
    """One epoch with `decode: cuda` (bytes read here, nvJPEG) or `cpu-crop-on-cuda`
    (decoded here), views and targets on the GPU."""
    from pld_pipeline.student.data.gpu_decode import (
        DecodedViewDataset,
        EncodedViewDataset,
        GpuViewDecoder,
        collate_encoded,
    )

    dataset = {"cuda": EncodedViewDataset, "cpu-crop-on-cuda": DecodedViewDataset}[decode]
    loader = epoch_loader(dataset(images, size), slabs, m, batch, collate_encoded)
    decoder = GpuViewDecoder(device, size)
    samples = 0
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for encoded in loader:
        b = decoder(encoded)
        gather_targets(slabs[:m], b.index.numpy(), "compact", device, slot=b.slot.numpy())
        normalize_batch(b.images, MEAN, STD, device, channels_last=True)
        samples += len(b.index)
    torch.cuda.synchronize(device)
    return {"wall_s": time.perf_counter() - started, "samples": samples,
            "decodes": len(images) // (batch // m) * (batch // m),
            "cpu_fallbacks": decoder.cpu_fallbacks}  # fmt: skip


def nvjpeg_figures(images: ImageFolderDataset, batch: int, device: torch.device) -> dict:
    """nvJPEG decode-only rate (batched) and its pixel difference from the CPU decoder."""
    from pld_pipeline.student.data.gpu_decode import GpuViewDecoder

    decoder = GpuViewDecoder(device, 224)
    files = [read_bytes(images.path(i)) for i in range(len(images))]
    decoder.decode(files[:batch], range(batch))  # warm-up: nvJPEG handles, buffers
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    out = []
    for j in range(0, len(files), batch):
        out += decoder.decode(files[j : j + batch], range(j, j + len(files[j : j + batch])))
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    diffs = [(g.cpu().int() - images.load_tensor(i).int()).abs() for i, g in enumerate(out)]
    return {
        "nvjpeg_decode_only_images_per_s": len(files) / seconds,
        "nvjpeg_vs_cpu_mean_abs_diff": float(np.mean([float(d.float().mean()) for d in diffs])),
        "nvjpeg_vs_cpu_max_abs_diff": int(max(int(d.max()) for d in diffs)),
        "nvjpeg_cpu_fallbacks": decoder.cpu_fallbacks,
    }


def bench(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)  # a DataLoader worker runs one thread
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    views = [int(v) for v in args.views.split(",")]
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-student-data-"))
    started = time.perf_counter()
    make_folder(work / "images", args.images)
    images = ImageFolderDataset(work / "images")
    slabs = build_cache(images, work / "cache.zarr", max(views), args.classes, args.k)
    print(f"{len(images)} JPEGs and a {max(views)}-view cache in "
          f"{time.perf_counter() - started:.1f}s under {work}", flush=True)  # fmt: skip
    agree = decoders_agree(images)

    rounds: dict[str, list[float]] = {"tv": [], "pil": []}
    runs: dict[int, list[dict]] = {m: [] for m in views}
    crop_runs: dict[int, list[dict]] = {m: [] for m in views}
    gpu_runs: dict[int, list[dict]] = {m: [] for m in views}
    exact_gpu_runs: dict[int, list[dict]] = {m: [] for m in views}
    for m in views:  # warm-up: allocator pools, first-call costs
        cpu_pipeline(images, slabs, m, args.batch, args.size)
        crop_on_device_workers(images, slabs, m, args.batch, args.size)
        if cuda:
            gpu_pipeline(images, slabs, m, args.batch, args.size, device)
            gpu_pipeline(images, slabs, m, args.batch, args.size, device, "cpu-crop-on-cuda")
    for r in range(args.repeat):
        rounds["tv"].append(decode_only(images, "torchvision"))
        rounds["pil"].append(decode_only(images, "pil"))
        for m in views if r % 2 == 0 else reversed(views):
            runs[m].append(cpu_pipeline(images, slabs, m, args.batch, args.size))
            crop_runs[m].append(crop_on_device_workers(images, slabs, m, args.batch, args.size))
            if cuda:
                gpu_runs[m].append(gpu_pipeline(images, slabs, m, args.batch, args.size, device))
                exact_gpu_runs[m].append(gpu_pipeline(images, slabs, m, args.batch, args.size,
                                                      device, "cpu-crop-on-cuda"))  # fmt: skip
        print(f"round {r + 1}/{args.repeat} done", flush=True)

    n = len(images)
    decode_rate = n / statistics.median(rounds["tv"])
    result: dict = {
        "images": n,
        "size": args.size,
        "batch": args.batch,
        "k": args.k,
        "classes": args.classes,
        "threads": torch.get_num_threads(),
        "default_decoder": "torchvision.io.decode_jpeg (libjpeg-turbo)",
        "decoders_equal_pixels": agree,
        "decode_only_images_per_s": decode_rate,
        "decode_only_torchvision_images_per_s": decode_rate,
        "decode_only_pil_images_per_s": n / statistics.median(rounds["pil"]),
        "views_per_image": views,
        "images_per_s": {},
        "decodes_per_sample": {},
        "worker_share": {},
    }
    result["pipeline_images_per_s"] = {}
    for m in views:
        last = runs[m][-1]
        result["images_per_s"][str(m)] = statistics.median(
            r["samples"] / r["worker_s"] for r in runs[m]
        )
        result["pipeline_images_per_s"][str(m)] = statistics.median(
            r["samples"] / r["wall_s"] for r in runs[m]
        )
        result["decodes_per_sample"][str(m)] = last["decodes"] / last["samples"]
        result["worker_share"][str(m)] = last["worker_s"] / last["wall_s"]
    if 1 in views and 4 in views:
        m1, m4 = result["images_per_s"]["1"], result["images_per_s"]["4"]
        limit = 4 * decode_rate  # samples/s if decoding were the only cost
        result["m4_over_m1"] = m4 / m1
        result["m4_limit_over_achieved"] = limit / m4
        result["targets"] = {"m4_over_m1_min": 2.0, "m4_limit_over_achieved_max": 1.3}
        result["met"] = {
            "m4_over_m1": m4 / m1 >= 2.0,
            "m4_within_1.3x_of_decode_limit": limit / m4 <= 1.3,
        }
    crop = {
        "worker_images_per_s": {
            str(m): statistics.median(r["samples"] / r["wall_s"] for r in crop_runs[m])
            for m in views
        },
        "decodes_per_sample": {
            str(m): crop_runs[m][-1]["decodes"] / crop_runs[m][-1]["samples"] for m in views
        },
    }
    if 1 in views and 4 in views:
        m1, m4 = crop["worker_images_per_s"]["1"], crop["worker_images_per_s"]["4"]
        crop["m4_over_m1"] = m4 / m1
        crop["m4_limit_over_achieved"] = 4 * decode_rate / m4
        crop["met"] = {
            "m4_over_m1": m4 / m1 >= 2.0,
            "m4_within_1.3x_of_decode_limit": 4 * decode_rate / m4 <= 1.3,
        }
    result["cpu_crop_on_cuda"] = crop
    if cuda:
        result["gpu"] = {
            "device_name": torch.cuda.get_device_name(device),
            "images_per_s": {
                str(m): statistics.median(r["samples"] / r["wall_s"] for r in gpu_runs[m])
                for m in views
            },
            "decodes_per_sample": {
                str(m): gpu_runs[m][-1]["decodes"] / gpu_runs[m][-1]["samples"] for m in views
            },
            "cpu_crop_on_cuda_images_per_s": {
                str(m): statistics.median(r["samples"] / r["wall_s"] for r in exact_gpu_runs[m])
                for m in views
            },
            "cpu_fallbacks": sum(r["cpu_fallbacks"] for rs in gpu_runs.values() for r in rs),
            **nvjpeg_figures(images, args.batch, device),
        }
    if args.dir is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return result


def report(row: dict) -> None:
    print(f"\nstudent input pipeline, one process, {row['threads']} thread, {row['images']} "
          f"JPEGs ~500x375 q90, {row['size']} px, batch {row['batch']}, top-{row['k']} of "
          f"{row['classes']}")  # fmt: skip
    tv, pil = row["decode_only_torchvision_images_per_s"], row["decode_only_pil_images_per_s"]
    print(f"  decode only, torchvision (default) {tv:8.1f} images/s")
    print(f"  decode only, PIL                   {pil:8.1f} images/s  (torchvision {tv / pil:.2f}x, "
          f"pixels {'equal' if row['decoders_equal_pixels'] else 'DIFFERENT'})")  # fmt: skip
    print("  | m | per worker, samples/s | x m=1 | m x decode-only / per worker | "
          "decodes/sample | whole chain, samples/s |")  # fmt: skip
    print("  | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = row["images_per_s"].get("1")
    for m in row["views_per_image"]:
        rate = row["images_per_s"][str(m)]
        limit = m * row["decode_only_images_per_s"]
        print(f"  | {m} | {rate:.1f} | {rate / base if base else float('nan'):.2f} | "
              f"{limit / rate:.2f} | {row['decodes_per_sample'][str(m)]:.3f} | "
              f"{row['pipeline_images_per_s'][str(m)]:.1f} |")  # fmt: skip
    if "met" in row:
        print(f"  targets: m=4 >= 2x m=1: {'met' if row['met']['m4_over_m1'] else 'MISSED'} "
              f"({row['m4_over_m1']:.2f}x); m=4 within 1.3x of 4 x decode-only: "
              f"{'met' if row['met']['m4_within_1.3x_of_decode_limit'] else 'MISSED'} "
              f"({row['m4_limit_over_achieved']:.2f}x)")  # fmt: skip
    c = row["cpu_crop_on_cuda"]
    rates = ", ".join(
        f"m={m}: {c['worker_images_per_s'][str(m)]:.0f}" for m in row["views_per_image"]
    )
    print(f"  decode: cpu-crop-on-cuda, the workers' part (decode, boxes, collate; views cut on "
          f"the GPU): samples/s per worker {rates}")  # fmt: skip
    if "met" in c:
        print(f"    targets: m=4 >= 2x m=1: {'met' if c['met']['m4_over_m1'] else 'MISSED'} "
              f"({c['m4_over_m1']:.2f}x); m=4 within 1.3x of 4 x decode-only: "
              f"{'met' if c['met']['m4_within_1.3x_of_decode_limit'] else 'MISSED'} "
              f"({c['m4_limit_over_achieved']:.2f}x)")  # fmt: skip
    if "gpu" in row:
        g = row["gpu"]
        rates = ", ".join(f"m={m}: {g['images_per_s'][str(m)]:.0f}" for m in row["views_per_image"])
        exact = ", ".join(f"m={m}: {g['cpu_crop_on_cuda_images_per_s'][str(m)]:.0f}"
                          for m in row["views_per_image"])  # fmt: skip
        print(f"  decode: cpu-crop-on-cuda, whole chain in one process on {g['device_name']}: "
              f"samples/s {exact}")  # fmt: skip
        print(f"  GPU decoding on {g['device_name']}: samples/s {rates}; nvJPEG decode only "
              f"{g['nvjpeg_decode_only_images_per_s']:.0f} images/s; pixels vs CPU decoder: "
              f"mean |diff| {g['nvjpeg_vs_cpu_mean_abs_diff']:.3f}, max "
              f"{g['nvjpeg_vs_cpu_max_abs_diff']}; CPU fallbacks {g['cpu_fallbacks']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda adds the GPU-decoding figures (default: cuda when present)")  # fmt: skip
    parser.add_argument("--images", type=int, default=512, help="JPEGs in the folder")
    parser.add_argument("--size", type=int, default=224, help="student input side")
    parser.add_argument("--batch", type=int, default=64, help="samples per batch")
    parser.add_argument("--views", default="1,2,4", help="views_per_image values")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    row = bench(args)
    report(row)
    if args.json:
        row["command"] = " ".join([Path(sys.executable).name, *sys.argv])
        row["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, {platform.processor()}"
        row["torch"], row["loadavg"] = torch.__version__, os.getloadavg()[0]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
