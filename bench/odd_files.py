"""Benchmark: a teacher pass with skip_bad_images over a folder with odd files, against the
same folder without them, side by side in one run.

The clean folder holds --images good JPEGs (crops of scikit-image's real photos, small
so the run takes minutes on a laptop); the mixed folder is the same files (hard links)
plus the odd-file corpus of the tests (`tests/odd_files_testlib.py`: empty, truncated,
text, CMYK, YCCK, 16-bit, palette, alpha, EXIF, progressive, 1x1, a 30000x2 strip, a
decompression bomb, odd names, symlinks and loops, no read permission, a file deleted
after listing). Each pass is the library's own steps, as the flow runs them on one
machine: prepare (list, create), every shard, finalize (bad samples and their reasons,
stats). Clean and mixed passes alternate --repeat times; the figures are the medians of
each and the median of the paired ratios mixed / clean (target: within 1.2x), by wall time
and by this process's CPU time. Then the manifest's bad list must be exactly the
corpus's undecodable files.

    .venv/bin/python bench/odd_files.py                  # 10,000 images, 3 pairs
    .venv/bin/python bench/odd_files.py --images 2000 --repeat 5
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
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from odd_files_testlib import BAD, write_corpus
from photos import make_folder

import storage
from pld_pipeline.configs.cache import CacheConfig
from pld_pipeline.teacher import cache_build, cache_report

TEACHER = "pld_pipeline.demo.small_models:seeded_tiny_cnn"


def pass_config(root: Path, output: Path, args: argparse.Namespace) -> CacheConfig:
    return CacheConfig.model_validate({
        "dataset_root": str(root), "classes": "sorted-folders", "min_label_agreement": 0.0,
        "teacher": {"name": TEACHER, "num_classes": 16, "input_size": args.size},
        "views": {"mode": "replay", "num_views": args.views, "seed": 0}, "format": "topk",
        "k": 5, "temperatures": [1.0], "shard_size": args.shard_size, "output": str(output),
        "batch_size": args.batch, "num_workers": args.workers, "device": "cpu",
        "skip_bad_images": True, "overwrite": True, "replay_check_samples": 0,
    })  # fmt: skip


def run_pass(
    config: CacheConfig, before_shards: Callable[[], None] | None = None
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one whole pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    plan = cache_build.prepare_cache(config)
    if before_shards is not None:
        before_shards()
    for shard, views in plan.shard_tasks():
        cache_build.build_shard(config, shard, views)
    cache_report.finalize_cache(config)
    return time.perf_counter() - wall, time.process_time() - cpu


def link_tree(src: Path, dst: Path) -> None:
    """`dst` holds the files of `src` as hard links (no copying 10,000 files)."""
    for folder, _dirs, files in os.walk(src):
        target = dst / Path(folder).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.link(Path(folder) / name, target / name)


def bench(args: argparse.Namespace) -> dict:
    work = Path(args.dir or tempfile.mkdtemp(prefix="pld-odd-files-"))
    clean, mixed = work / "clean", work / "mixed"
    if not clean.exists():
        make_folder(clean, args.images, classes=10, seed=0, size=(args.width, args.height))
    if mixed.exists():
        raise SystemExit(f"{mixed} exists; give an empty --dir")
    link_tree(clean, mixed)
    corpus = write_corpus(mixed, plain=0)
    kept = corpus.vanishing.read_bytes()
    bad = corpus.keys(BAD)
    torch.set_num_threads(args.threads)
    times: dict[str, list[tuple[float, float]]] = {"clean": [], "mixed": []}
    for r in range(args.repeat + 1):  # the first pair warms up (teacher, imports, page cache)
        for name, folder in (("clean", clean), ("mixed", mixed)):
            # A new path to the same folder each time: the pass lists it anew (the
            # listing is cached per path in a process, as in a Dask worker).
            root = work / f"{name}-{r}"
            root.symlink_to(folder)
            config = pass_config(root, work / f"{name}.zarr", args)
            vanish = corpus.vanish if name == "mixed" else None
            seconds = run_pass(config, vanish)
            if name == "mixed":
                corpus.vanishing.write_bytes(kept)
            if r:
                times[name].append(seconds)
            print(f"  {'warm-up' if not r else f'pair {r}'} {name:5s} {seconds[0]:7.2f} s wall "
                  f"{seconds[1]:7.2f} s CPU", flush=True)  # fmt: skip
    with storage.open_cache(str(work / "mixed.zarr")) as reader:
        recorded = reader.bad_samples()
        reasons = reader.bad_reasons()
    with storage.open_cache(str(work / "clean.zarr")) as reader:
        clean_bad = reader.bad_samples()

    def figures(kind: int) -> dict:
        c = [t[kind] for t in times["clean"]]
        m = [t[kind] for t in times["mixed"]]
        return {
            "clean_median_s": statistics.median(c),
            "mixed_median_s": statistics.median(m),
            "ratio_of_medians": statistics.median(m) / statistics.median(c),
            "median_paired_ratio": statistics.median(b / a for a, b in zip(c, m, strict=True)),
        }

    return {
        "images": args.images,
        "odd_files": len(corpus.files),
        "undecodable": bad,
        "recorded_bad": recorded,
        "bad_list_exact": recorded == bad and not clean_bad,
        "reasons": reasons,
        "wall": figures(0),
        "cpu": figures(1),
        "pairs": args.repeat,
        "workers": args.workers,
        "threads": args.threads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="good images")
    parser.add_argument("--width", type=int, default=64, help="image width (70%%; else height)")
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--size", type=int, default=32, help="teacher input side")
    parser.add_argument("--views", type=int, default=1, help="replay views")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader decoding processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeat", type=int, default=3, help="timed clean/mixed pairs")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    # The pass warns once per bad file and shard; the summary below lists them instead.
    logging.getLogger("pld_pipeline").setLevel(logging.ERROR)
    row = bench(args)
    print(f"\n{row['images']} good images ({args.width}x{args.height}) vs the same plus "
          f"{row['odd_files']} odd files, skip_bad_images, {args.views} view(s) at "
          f"{args.size}px, {args.workers} workers, {args.threads} thread(s), "
          f"{row['pairs']} pairs")  # fmt: skip
    for kind in ("wall", "cpu"):
        f = row[kind]
        print(f"  {kind:4s}  clean {f['clean_median_s']:7.2f} s   mixed {f['mixed_median_s']:7.2f} s"
              f"   ratio {f['ratio_of_medians']:.3f} (paired {f['median_paired_ratio']:.3f}; "
              "target <= 1.2)")  # fmt: skip
    print(f"  bad list in the manifest == the undecodable files: {row['bad_list_exact']} "
          f"({len(row['recorded_bad'])} files)")  # fmt: skip
    for key, reason in row["reasons"].items():
        print(f"    {key}: {reason}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        row["command"] = " ".join([Path(sys.executable).name, *sys.argv])
        row["machine"] = f"{platform.machine()} {os.cpu_count()} cpus"
        Path(args.json).write_text(json.dumps(row, indent=2))
    return 0 if row["bad_list_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
