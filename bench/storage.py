"""Benchmark of the logit cache: write, load_view, gather, bytes per record, per codec.

Synthetic records with realistic values (Gaussian logits with the true class raised,
sorted top-K log-probabilities, C classes) for K in --ks and the full format, written
with every codec in --codecs. Figures are medians over --repeat runs; load_view reads
from the page cache (the files were just written), which is the steady state of a
student reading its views epoch after epoch.

    .venv/bin/python bench/storage.py                  # N = 100,000, C = 1000
    .venv/bin/python bench/storage.py --n 20000 --json bench/results/storage.json
    .venv/bin/python bench/storage.py --moto --url s3://pld-bench/top100   # S3 vs local disk

With --real FULL_CACHE (a full-logit cache of a real teacher, e.g. the one bench/fidelity.py
writes), the real teacher's records are written at top-5, 10 and 100 with record precision
fp16 and q8 and every --codecs codec: bytes per record (the chunk files of each per-view
array and their sum; the view with its arrays' metadata; the disk), and whole-view
load_view records/s on the records tiled to --n (chunks of
--shard-size, as a real cache). Bytes come from the untiled records: tiling would repeat
records inside a chunk, which the codecs would find.

    nice .venv/bin/python bench/storage.py --real bench/results/fidelity/teacher-full-v200.zarr \
        --codecs blosc-lz4,blosc-zstd --json bench/results/storage_real.json

With --url, only top-100 with the default codec is measured, at the URL and on local disk
in alternating rounds of one run, and the ratio of medians is printed. --moto starts a
loopback S3 server (moto) and points the AWS variables at it: that figure is moto's and
this machine's, not AWS's (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import storage
from storage.synthetic import make_labels, make_logits, make_manifest, records_from_logits

TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


def median_seconds(fn, repeat: int) -> float:
    """Median wall time of fn() over ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_shards(manifest, labels, logits_per_shard):
    """Records of every shard of view 0, as the teacher hands them (float32, int64)."""
    out = []
    for s, z in enumerate(logits_per_shard):
        a = s * manifest.shard_size
        out.append(records_from_logits(manifest, 0, a, z, labels[a : a + len(z)]))
    return out


def bench_one(path, manifest, labels, shards, compressor, args) -> dict:
    keys = [f"class{label:04d}/img{i:07d}.JPEG" for i, label in enumerate(labels)]
    n = manifest.num_samples

    # Create (keys, labels, empty arrays) is a one-off cost and is timed apart;
    # write throughput is that of write_shard: checks, float16 cast, compression, files.
    t_create, t_writes = [], []
    for _ in range(max(2, args.repeat // 2)):
        start = time.perf_counter()
        writer = storage.create(path, manifest, keys, labels, overwrite=True, compressor=compressor)
        t_create.append(time.perf_counter() - start)
        start = time.perf_counter()
        for s, records in enumerate(shards):
            writer.write_shard(0, s, records)
        t_writes.append(time.perf_counter() - start)
    t_write = statistics.median(t_writes[1:])  # the first run is a warm-up
    reader = storage.open_cache(path)
    t_load = median_seconds(lambda: reader.load_view(0), args.repeat)
    slab = reader.load_view(0)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, n, args.batch) for _ in range(args.gathers)]

    def gather_all():
        for idx in batches:
            slab.gather(idx)

    t_gather = median_seconds(gather_all, args.repeat)
    summary = storage.summarize(path)
    return {
        "format": manifest.format,
        "k": manifest.k,
        "codec": compressor,
        "n": n,
        "write_records_per_s": n / t_write,
        "create_s": statistics.median(t_create),
        "load_records_per_s": n / t_load,
        "load_mb_per_s": slab.nbytes / t_load / 1e6,
        "gather_records_per_s": args.batch * args.gathers / t_gather,
        "disk_bytes": summary.disk_bytes,
        "disk_bytes_per_record": summary.disk_bytes / n,
        "view_bytes_per_record": summary.bytes_per_record,
        "slab_bytes_per_record": slab.nbytes / n,
        "compression_ratio": summary.compression_ratio,
        "teacher_top1": summary.top1.get(0),
    }


def bench_layout(tmp: Path, logp: np.ndarray, shard_size: int, repeat: int) -> list[dict]:
    """Plain chunks (1, shard, K) against the zarr sharding codec (inner chunks of 1024)."""
    codec = storage.COMPRESSORS[storage.DEFAULT_COMPRESSOR](logp.dtype)
    rows = []
    for name, chunks, shards in [
        ("chunks=(1,shard,K)", (1, shard_size, logp.shape[1]), None),
        (
            "shards=(1,shard,K) inner=(1,1024,K)",
            (1, 1024, logp.shape[1]),
            (1, shard_size, logp.shape[1]),
        ),
    ]:
        path = tmp / "layout.zarr"
        shutil.rmtree(path, ignore_errors=True)
        array = zarr.create_array(
            str(path),
            shape=(1, *logp.shape),
            chunks=chunks,
            shards=shards,
            dtype=logp.dtype,
            compressors=codec,
            config={"write_empty_chunks": True},
        )

        def write(array=array):
            for a in range(0, len(logp), shard_size):
                array[0, a : a + shard_size] = logp[a : a + shard_size]

        t_write = median_seconds(write, max(1, repeat // 2))
        t_read = median_seconds(lambda array=array: array[0, :], repeat)
        rows.append(
            {
                "layout": name,
                "write_records_per_s": len(logp) / t_write,
                "read_records_per_s": len(logp) / t_read,
                "bytes_per_record": array.nbytes_stored() / len(logp),
            }
        )
    return rows


def bench_shard_sizes(tmp: Path, manifest, labels, shards, sizes, args) -> list[dict]:
    """Write and load_view throughput of the default codec for other shard (chunk) sizes."""
    whole = {k: np.concatenate([r[k] for r in shards]) for k in shards[0]}
    rows = []
    for size in sizes:
        m = make_manifest(
            num_samples=manifest.num_samples,
            num_classes=manifest.num_classes,
            k=manifest.k,
            fmt=manifest.format,
            num_views=1,
            shard_size=size,
            temperatures=manifest.temperatures,
        )
        split = [
            {k: v[a : a + size] for k, v in whole.items()} for a in range(0, m.num_samples, size)
        ]
        row = bench_one(
            tmp / f"shard{size}.zarr", m, labels, split, storage.DEFAULT_COMPRESSOR, args
        )
        shutil.rmtree(tmp / f"shard{size}.zarr")
        rows.append({"shard_size": size, **row})
    return rows


def start_moto(url: str) -> object:
    """A loopback S3 server (moto) with fake keys and the URL's bucket; returns the server."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    boto3.client("s3").create_bucket(Bucket=bucket)
    return server


def bench_url(url: str, tmp: Path, labels, logits, args) -> list[dict]:
    """Write and load_view records/s of top-100 at `url` and on local disk, side by side.

    Rounds alternate local and remote so both see the same machine load; medians over
    --repeat rounds.
    """
    k = min(100, args.c)
    manifest = make_manifest(num_samples=args.n, num_classes=args.c, k=k, num_views=1,
                             shard_size=args.shard_size, temperatures=TEMPERATURES)  # fmt: skip
    shards = make_shards(manifest, labels, logits)
    keys = [f"class{label:04d}/img{i:07d}.JPEG" for i, label in enumerate(labels)]
    places = {"local disk": str(tmp / "local.zarr"), url: url}
    times: dict[str, dict[str, list[float]]] = {p: {"write": [], "load": []} for p in places}
    for _ in range(args.repeat + 1):  # the first round warms both up and is dropped
        for name, path in places.items():
            writer = storage.create(path, manifest, keys, labels, overwrite=True)
            start = time.perf_counter()
            for s, records in enumerate(shards):
                writer.write_shard(0, s, records)
            times[name]["write"].append(time.perf_counter() - start)
            reader = storage.open_cache(path)
            start = time.perf_counter()
            reader.load_view(0)
            times[name]["load"].append(time.perf_counter() - start)
    rows = []
    for name in places:
        write = statistics.median(times[name]["write"][1:])
        load = statistics.median(times[name]["load"][1:])
        rows.append({"where": name, "k": k, "n": args.n, "write_records_per_s": args.n / write,
                     "load_records_per_s": args.n / load})  # fmt: skip
    local, remote = rows
    print(f"\ntop-{k}, N={args.n:,}, shard {args.shard_size}, medians of {args.repeat} rounds:")
    for r in rows:
        print(f"  {r['where']:<32} write {r['write_records_per_s']:>12,.0f} rec/s   "
              f"load_view {r['load_records_per_s']:>12,.0f} rec/s")  # fmt: skip
    print(f"  {'ratio (url / local disk)':<32} write {remote['write_records_per_s'] / local['write_records_per_s']:>12.2f}"
          f"         load_view {remote['load_records_per_s'] / local['load_records_per_s']:>12.2f}")  # fmt: skip
    return rows


def chunk_bytes(array_dir: Path) -> int:
    """Bytes of an array's chunk files: what grows with the records. Its zarr.json (about
    700 B per array, once per cache) is left out: over 4,200 records it would add 0.2 B
    per record per array, over an ImageNet view 0.0005."""
    return sum(f.stat().st_size for f in (array_dir / "c").rglob("*") if f.is_file())


def bench_real(full_cache: Path, tmp: Path, args) -> list[dict]:
    """Bytes per record and load speed of real-teacher records, fp16 against q8."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import real_teacher

    dense = real_teacher.load_dense(full_cache)
    v, n, c = dense["logits"].shape
    copies = max(1, -(-args.n // (v * n)))
    tiled = {
        **dense,
        "logits": np.tile(dense["logits"], (copies, 1, 1)),
        "crop": np.tile(dense["crop"], (copies, 1, 1)),
        "flip": np.tile(dense["flip"], (copies, 1)),
        "labels_per_record": np.tile(dense["labels_per_record"], copies),
    }
    rows = []
    for k in [int(x) for x in args.real_ks.split(",")]:
        for precision in ("fp16", "q8"):
            for codec in args.codecs.split(","):
                path = tmp / f"real-top{k}-{precision}-{codec}.zarr"
                real_teacher.write_record_cache(path, dense, k, precision, codec)
                reader = storage.open_cache(path)
                records = reader.num_samples
                names = storage.schema.per_view_arrays(reader.manifest)
                arrays = {name: chunk_bytes(path / name) / records for name in names}
                summary = storage.summarize(path)
                shutil.rmtree(path)
                path = tmp / f"tiled-top{k}-{precision}-{codec}.zarr"
                real_teacher.write_record_cache(path, tiled, k, precision, codec)
                big = storage.open_cache(path)
                t_load = median_seconds(lambda big=big: big.load_view(0), args.repeat)
                row = {
                    "k": k, "precision": precision, "codec": codec, "records": records,
                    "chunk_bytes_per_record": sum(arrays.values()),
                    "view_bytes_per_record": summary.bytes_per_record,
                    "disk_bytes_per_record": summary.disk_bytes / records,
                    "array_bytes_per_record": arrays,
                    "load_records": big.num_samples,
                    "load_records_per_s": big.num_samples / t_load,
                }  # fmt: skip
                shutil.rmtree(path)
                rows.append(row)
                print(
                    f"top-{k:<4} {precision:<5} {codec:<11} chunks "
                    f"{row['chunk_bytes_per_record']:6.2f} B/rec  view {row['view_bytes_per_record']:6.1f} "
                    f"B/rec  disk {row['disk_bytes_per_record']:6.1f} B/rec  load_view "
                    f"{row['load_records_per_s']:>11,.0f} rec/s  "
                    + " ".join(f"{a}={b:.1f}" for a, b in arrays.items())
                )
    return rows


def print_table(rows: list[dict]) -> None:
    """One line per (format, K, codec); B/rec view counts the per-view arrays only."""
    print(
        f"{'format':>6} {'K':>5} {'codec':>11} {'write rec/s':>12} {'load rec/s':>12} "
        f"{'load MB/s':>10} {'gather rec/s':>13} {'B/rec view':>11} {'B/rec disk':>11} "
        f"{'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['format']:>6} {r['k']:>5} {r['codec']:>11} {r['write_records_per_s']:>12,.0f} "
            f"{r['load_records_per_s']:>12,.0f} {r['load_mb_per_s']:>10,.0f} "
            f"{r['gather_records_per_s']:>13,.0f} {r['view_bytes_per_record']:>11.1f} "
            f"{r['disk_bytes_per_record']:>11.1f} {r['compression_ratio']:>6.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="records per view")
    parser.add_argument("--c", type=int, default=1000, help="number of classes")
    parser.add_argument("--ks", default="10,50,100,full", help="K values and/or 'full'")
    parser.add_argument("--codecs", default=",".join(storage.COMPRESSORS))
    parser.add_argument("--shard-size", type=int, default=storage.DEFAULT_SHARD_SIZE)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--shard-sizes",
        default="2048,8192,32768",
        help="shard sizes tried for K=100 with the default codec ('' to skip)",
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--gathers", type=int, default=2000, help="batches per gather timing")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument("--url", default=None,
                        help="also measure top-100 at this fsspec URL (e.g. s3://bucket/prefix), "
                        "side by side with local disk; skips the codec and layout sweeps")  # fmt: skip
    parser.add_argument("--real", default=None, help="full cache of a real teacher (see above)")
    parser.add_argument("--real-ks", default="5,10,100", help="K values for --real")
    parser.add_argument(
        "--moto",
        action="store_true",
        help="start a loopback S3 server (moto, fake keys) for --url s3://...",
    )
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="bench-storage-"))
    tmp.mkdir(parents=True, exist_ok=True)
    if args.real:
        real_rows = bench_real(Path(args.real), tmp, args)
        if args.dir is None:
            shutil.rmtree(tmp)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            info = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                    "zarr": zarr.__version__, "numpy": np.__version__,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()}  # fmt: skip
            Path(args.json).write_text(json.dumps({"info": info, "rows": real_rows}, indent=2))
        return 0
    labels = make_labels(args.n, args.c)
    size = args.shard_size
    logits = [make_logits(labels[a : a + size], args.c, 0, a) for a in range(0, args.n, size)]
    if args.url:
        server = start_moto(args.url) if args.moto else None
        url_rows = bench_url(args.url, tmp, labels, logits, args)
        if server is not None:
            server.stop()
        if args.dir is None:
            shutil.rmtree(tmp)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"url": args.url, "moto": args.moto,
                                                   "rows": url_rows}, indent=2))  # fmt: skip
        return 0
    rows, shard_rows = [], []
    for k_text in args.ks.split(","):
        fmt, k = ("full", 0) if k_text == "full" else ("topk", int(k_text))
        manifest = make_manifest(
            num_samples=args.n,
            num_classes=args.c,
            k=k,
            fmt=fmt,
            num_views=1,
            shard_size=size,
            temperatures=TEMPERATURES,
        )
        shards = make_shards(manifest, labels, logits)
        for codec in args.codecs.split(","):
            path = tmp / f"{fmt}{k}_{codec}.zarr"
            rows.append(bench_one(path, manifest, labels, shards, codec, args))
            print_table(rows[-1:])
            shutil.rmtree(path)
        if k == 100 and args.shard_sizes:
            sizes = [int(x) for x in args.shard_sizes.split(",")]
            shard_rows = bench_shard_sizes(tmp, manifest, labels, shards, sizes, args)
        del shards
    m100 = make_manifest(
        num_samples=args.n,
        num_classes=args.c,
        k=min(100, args.c),
        num_views=1,
        shard_size=size,
        temperatures=TEMPERATURES,
    )
    logp = np.concatenate([r["topk_logp"] for r in make_shards(m100, labels, logits)])
    layout = bench_layout(tmp, logp.astype(np.float16), size, args.repeat)
    if args.dir is None:
        shutil.rmtree(tmp)

    print("\nSummary (medians):")
    print_table(rows)
    print("\nLayout of topk_logp (K=100), default codec:")
    for r in layout:
        print(
            f"  {r['layout']:<38} write {r['write_records_per_s']:>12,.0f} rec/s  "
            f"read {r['read_records_per_s']:>12,.0f} rec/s  {r['bytes_per_record']:.1f} B/rec"
        )
    if shard_rows:
        print("\nShard size (chunk along N), K=100, default codec:")
        for r in shard_rows:
            print(
                f"  shard_size {r['shard_size']:>6}: write {r['write_records_per_s']:>10,.0f} "
                f"rec/s  load {r['load_records_per_s']:>11,.0f} rec/s  "
                f"{r['view_bytes_per_record']:.1f} B/rec"
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        info = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            "python": platform.python_version(),
            "zarr": zarr.__version__,
            "numpy": np.__version__,
            "shard_size": size,
            "batch": args.batch,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        }
        Path(args.json).write_text(
            json.dumps(
                {"info": info, "rows": rows, "layout": layout, "shard_sizes": shard_rows}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
