"""What a top-K record keeps of a real teacher, per loss, K and T; and what q8 records cost.

A real ImageNet-1k teacher (EfficientNet-Lite0) over 21 real photos, `--views` random
views each (bench/real_teacher.py: a full-logit cache written by the pipeline's own pass
steps) is the dense reference. A real student gives the logits the gradients are taken
at: a torchvision ResNet-18 (random init, 1000 classes) trained from that cache with PLD
by the pipeline's `fit` for `--student-steps` steps at `--student-size` pixels (small,
so it trains in minutes on 2 CPU cores), then run on every cached view.

For every K in --ks and T in --temps:
- tail mass: teacher probability at T outside the top-K (mean and p95 over records);
- KL(teacher at T || the reconstruction KD, DIST and DKD get from top-K targets);
- PLD's dropped weight (what PLD's compact form leaves out: tail minus the label);
- per loss (ce as the control, kd, dist, dkd, pld at T with their other defaults): the
  relative error of the batch gradient w.r.t. the student logits, compact against dense,
  ||g_K - g|| / ||g|| over batches of --batch records (mean and p95 over batches).

Then, with `--precision`, the same records written as real top-K caches with record
precision fp16 and q8 (bench/real_teacher.py `write_record_cache`) and read back: KL
(fp16 reconstruction || q8 reconstruction) and the gradient error of q8 against fp16.

    nice .venv/bin/python bench/fidelity.py --json bench/results/fidelity.json

writes the figures, prints the tables, and with --bands writes the gradient-error table
the student runs read (pld_pipeline/student/data/gradient_bands.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import real_teacher
import torch

from pld_pipeline.losses import make_loss
from pld_pipeline.losses.fidelity import (
    compact_targets,
    gradient_error,
    reconstruction_kl,
    top_k_tail_mass,
)
from pld_pipeline.losses.targets import CachedTargets

logger = logging.getLogger("bench.fidelity")
LOSSES = ("ce", "kd", "dist", "dkd", "pld")
THRESHOLDS = (0.01, 0.05, 0.10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="bench/results/fidelity", help="photos, caches, student")
    p.add_argument("--json", default="bench/results/fidelity.json")
    p.add_argument("--views", type=int, default=200, help="cached views per photo")
    p.add_argument("--ks", default="1,2,5,10,20,50,100,200")
    p.add_argument("--temps", default="1,2,4")
    p.add_argument("--batch", type=int, default=64, help="records per gradient batch")
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--student-size", type=int, default=64, help="student input side")
    p.add_argument("--precision", default="5,10,100", help="K values of the fp16/q8 check")
    p.add_argument("--bands", default=None, help="write the gradient-band table here")
    p.add_argument(
        "--part", choices=("all", "truncation", "precision"), default="all",
        help="measure only one part; 'precision' adds to an existing --json of 'truncation'",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", default=None, help="write the docs page's tables here")
    p.add_argument(
        "--merge", nargs="+", default=None,
        help="combine the truncation figures of these --json files (runs over parts of --ks, "
        "e.g. in parallel processes) into --json, then write --bands and --markdown",
    )  # fmt: skip
    return p.parse_args(argv)


def train_student(workdir: Path, photos: Path, cache: Path, steps: int, size: int) -> Path:
    """A ResNet-18 trained from the full cache by the pipeline's `fit` (PLD, dense targets)."""
    from pld_pipeline.configs.train import TrainConfig
    from pld_pipeline.student.run.run_dir import RunDir
    from pld_pipeline.student.run.train import fit

    per_image, batch = 20, 60  # 21 photos x 20 views = 420 records: 7 steps per epoch
    config = TrainConfig.model_validate({
        "cache": str(cache), "dataset_root": str(photos), "classes": real_teacher.class_names(),
        "target_form": "dense", "views_per_image": per_image, "batch_size": batch,
        "epochs": max(1, steps // 7), "loss": {"name": "pld"},
        "student": {"name": "resnet18", "image_size": size},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                  "weight_decay": 5e-5, "warmup_epochs": 1.0},
        "run_dir": str(workdir / f"student-resnet18-{size}px-{steps}steps"), "device": "cpu",
        "amp": "off", "num_workers": 0, "resume": True, "log_every": 10,
    })  # fmt: skip
    if RunDir(config.run_dir).finished_result(config) is None:
        fit(config)
    return Path(config.run_dir)


def student_logits(run_dir: Path, photos: Path, cache: Path) -> np.ndarray:
    """The trained student's logits on every cached view: [V, N, C] float32."""
    import storage
    from pld_pipeline.configs.train import TrainConfig
    from pld_pipeline.label_order import load_dataset
    from pld_pipeline.teacher.models import create_model
    from pld_pipeline.views import normalize_batch, replay_view

    out_path = run_dir / "student_logits.npy"
    if out_path.exists():
        return np.load(out_path)
    config = TrainConfig.model_validate_json((run_dir / "config.json").read_text())
    model = create_model(config.student.name, num_classes=real_teacher.NUM_CLASSES)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model.eval()
    images = load_dataset(photos, None, real_teacher.class_names())
    reader = storage.open_cache(cache)
    student = config.student
    rgb = [images.load_rgb(i) for i in range(len(images))]
    logits = np.zeros((reader.num_views, reader.num_samples, reader.num_classes), np.float32)
    with torch.inference_mode():
        for v in range(reader.num_views):
            slab = reader.load_view(v)
            pixels = torch.stack([
                replay_view(rgb[i], slab.crop[i], bool(slab.flip[i]), student.image_size,
                            student.interpolation)
                for i in range(len(rgb))
            ])  # fmt: skip
            logits[v] = model(normalize_batch(pixels, student.mean, student.std)).numpy()
    np.save(out_path, logits)
    return logits


def _batches(records: int, size: int) -> list[np.ndarray]:
    order = np.random.default_rng(0).permutation(records)
    return [order[a : a + size] for a in range(0, records - size + 1, size)]


def _stats(values: list[float] | np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "p95": float(np.quantile(values, 0.95))}


def measure_truncation(teacher, labels, student, ks, temps, batch) -> dict:
    """Tail mass, KL, PLD's dropped weight and gradient errors for every (K, T, loss)."""
    from pld_pipeline.losses import pld_dropped_weight

    z = torch.from_numpy(teacher).double()
    y = torch.from_numpy(labels).long()
    s = torch.from_numpy(student).double()
    batches = [torch.from_numpy(b) for b in _batches(len(z), batch)]
    all_temps = tuple(sorted(set(temps) | {1.0}))
    rows = []
    for k in ks:
        compact = compact_targets(z, y, k, all_temps)
        for t in temps:
            row = {"k": k, "temperature": t}
            row["tail_mass"] = _stats(top_k_tail_mass(z, k, t).numpy())
            row["kl"] = _stats(reconstruction_kl(z, compact, y, t).numpy())
            row["pld_dropped_weight"] = _stats(pld_dropped_weight(compact, y, t).numpy())
            row["gradient_error"] = {}
            for name in LOSSES:
                loss = make_loss(name) if name == "ce" else make_loss(name, temperature=t)
                errors = [
                    gradient_error(loss, s[b], z[b], _rows(compact, b), y[b]) for b in batches
                ]
                row["gradient_error"][name] = _stats(errors)
            rows.append(row)
            logger.info(
                "K=%d T=%g: tail %.3f (p95 %.3f) KL %.4f; grad error %s",
                k, t, row["tail_mass"]["mean"], row["tail_mass"]["p95"], row["kl"]["mean"],
                " ".join(f"{n} {row['gradient_error'][n]['mean']:.3g}" for n in LOSSES),
            )  # fmt: skip
    return {"rows": rows, "batches": len(batches), "batch": batch}


def _rows(targets: CachedTargets, index: torch.Tensor) -> CachedTargets:
    return CachedTargets(
        targets.topk_idx[index], targets.topk_logp[index], targets.lse[index],
        targets.temperatures, targets.gt_logit[index],
    )  # fmt: skip


def _slab_targets(slab) -> CachedTargets:
    return CachedTargets(
        topk_idx=torch.from_numpy(slab.topk_idx.astype(np.int64)),
        topk_logp=torch.from_numpy(slab.topk_logp.astype(np.float64)),
        lse=torch.from_numpy(slab.lse.astype(np.float64)),
        temperatures=slab.temperatures,
        gt_logit=torch.from_numpy(slab.gt_logit.astype(np.float64)),
    )


def measure_precision(workdir, dense, student, ks, temps, batch) -> list[dict]:
    """fp16 against q8 records of the same real-teacher records, read back by the reader."""
    import storage
    from pld_pipeline.losses.teacher import teacher_log_probs

    out = []
    for k in ks:
        slabs = {}
        for precision in ("fp16", "q8"):
            path = workdir / f"records-top{k}-{precision}.zarr"
            real_teacher.write_record_cache(path, dense, k, precision)
            slabs[precision] = storage.open_cache(path).load_view(0)
        order = real_teacher.record_order(dense)
        y = torch.from_numpy(dense["labels_per_record"][order]).long()
        s = torch.from_numpy(student.reshape(-1, student.shape[-1])[order]).double()
        fp16, q8 = (_slab_targets(slabs[p]) for p in ("fp16", "q8"))
        assert np.array_equal(slabs["fp16"].topk_idx, slabs["q8"].topk_idx)
        batches = [torch.from_numpy(b) for b in _batches(len(y), batch)]
        c = s.shape[1]
        for t in temps:
            log_p = teacher_log_probs(fp16, y, c, t, torch.float64)
            log_q = teacher_log_probs(q8, y, c, t, torch.float64)
            p = log_p.exp()
            kl = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(1).clamp_min(0.0).numpy()
            row = {"k": k, "temperature": t, "kl_vs_fp16": {**_stats(kl), "max": float(kl.max())}}
            row["gradient_error_vs_fp16"] = {}
            for name in LOSSES:
                loss = make_loss(name) if name == "ce" else make_loss(name, temperature=t)
                errors = [
                    gradient_error(loss, s[b], _rows(fp16, b), _rows(q8, b), y[b]) for b in batches
                ]
                row["gradient_error_vs_fp16"][name] = {**_stats(errors), "max": max(errors)}
            out.append(row)
            logger.info(
                "q8 vs fp16, K=%d T=%g: KL mean %.2e max %.2e; grad error %s",
                k, t, row["kl_vs_fp16"]["mean"], row["kl_vs_fp16"]["max"],
                " ".join(f"{n} {row['gradient_error_vs_fp16'][n]['max']:.2e}" for n in LOSSES),
            )  # fmt: skip
    return out


def band_table(rows: list[dict]) -> dict:
    """For each loss and T: the smallest measured K whose mean gradient error is within
    1 %, 5 % and 10 % (None when no measured K is)."""
    table: dict = {}
    for name in LOSSES:
        for t in sorted({r["temperature"] for r in rows}):
            measured = sorted(
                (r["k"], r["gradient_error"][name]["mean"]) for r in rows if r["temperature"] == t
            )
            table.setdefault(name, {})[f"{t:g}"] = {
                f"{int(th * 100)}%": next((k for k, e in measured if e <= th), None)
                for th in THRESHOLDS
            }
    return table


def print_tables(result: dict) -> None:
    rows = result["truncation"]["rows"]
    print("\nTail mass outside the top-K, mean (p95); KL(full || reconstruction), mean:")
    for t in sorted({r["temperature"] for r in rows}):
        cells = [
            f"K={r['k']}: {r['tail_mass']['mean']:.3f} ({r['tail_mass']['p95']:.3f}) "
            f"KL {r['kl']['mean']:.3f}"
            for r in rows
            if r["temperature"] == t
        ]
        print(f"  T={t:g}: " + "; ".join(cells))
    print("\nGradient error, compact vs dense (mean over batches):")
    for name in LOSSES:
        for t in sorted({r["temperature"] for r in rows}):
            cells = [
                f"{r['k']}:{r['gradient_error'][name]['mean']:.3g}"
                for r in rows
                if r["temperature"] == t
            ]
            print(f"  {name:>4} T={t:g}  " + " ".join(cells))
    for row in result.get("precision", []):
        print(
            f"q8 vs fp16 K={row['k']} T={row['temperature']:g}: KL mean "
            f"{row['kl_vs_fp16']['mean']:.2e} max {row['kl_vs_fp16']['max']:.2e}; max grad "
            "error "
            + " ".join(f"{n} {e['max']:.2e}" for n, e in row["gradient_error_vs_fp16"].items())
        )
    print("\nSmallest K within 1 % / 5 % / 10 % of the dense gradient:")
    for name, by_t in result["bands"].items():
        for t, ks in by_t.items():
            print(f"  {name:>4} T={t}: " + " / ".join(str(ks[x]) for x in ("1%", "5%", "10%")))


def _pct(fraction: float) -> str:
    """A percentage with two significant digits, whole numbers from 10 % on."""
    value = 100 * fraction
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def markdown_tables(result: dict) -> str:
    """The docs page's tables (docs/choosing-k-t-precision.md), from the figures."""
    rows = result["truncation"]["rows"]
    ks = sorted({r["k"] for r in rows})
    temps = sorted({r["temperature"] for r in rows})
    cell = {(r["k"], r["temperature"]): r for r in rows}
    head = "| T | " + " | ".join(f"K={k}" for k in ks) + " |\n|" + " --- |" * (len(ks) + 1)
    out = ["Teacher mass outside the top-K, mean (p95):", "", head]
    for t in temps:
        out.append(f"| {t:g} | " + " | ".join(
            f"{cell[k, t]['tail_mass']['mean']:.2f} ({cell[k, t]['tail_mass']['p95']:.2f})"
            for k in ks) + " |")  # fmt: skip
    out += ["", "KL(teacher || what KD, DIST and DKD get from the top-K), nats, mean:", "", head]
    for t in temps:
        out.append(f"| {t:g} | " + " | ".join(f"{cell[k, t]['kl']['mean']:.3f}" for k in ks)
                   + " |")  # fmt: skip
    out += ["", "Gradient error against dense targets, mean over batches (%):", "",
            "| loss | T | " + " | ".join(f"K={k}" for k in ks) + " |",
            "|" + " --- |" * (len(ks) + 2)]  # fmt: skip
    for name in LOSSES:
        for t in temps:
            out.append(f"| {name} | {t:g} | " + " | ".join(
                _pct(cell[k, t]["gradient_error"][name]["mean"]) for k in ks) + " |")  # fmt: skip
    out += ["", "For loss L at temperature T, K >= k keeps the gradient within 1 % (5 %, 10 %) "
            "of dense (mean over batches; '-' : no measured K does):", "",
            "| loss | T | 1 % | 5 % | 10 % |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, by_t in result["bands"].items():
        for t, within in by_t.items():
            out.append(f"| {name} | {t} | " + " | ".join(
                "-" if within[x] is None else f"K >= {within[x]}" for x in ("1%", "5%", "10%"))
                + " |")  # fmt: skip
    if result.get("precision"):
        out += ["", "q8 against fp16 records of the same teacher outputs: KL(fp16 || q8) of "
                "the reconstruction (nats, mean and max over records) and the largest gradient "
                "error over batches (%):", "",
                "| K | T | KL mean | KL max | " + " | ".join(LOSSES) + " |",
                "|" + " --- |" * (4 + len(LOSSES))]  # fmt: skip
        for r in result["precision"]:
            g = r["gradient_error_vs_fp16"]
            out.append(
                f"| {r['k']} | {r['temperature']:g} | {r['kl_vs_fp16']['mean']:.1e} | "
                f"{r['kl_vs_fp16']['max']:.1e} | "
                + " | ".join(f"{100 * g[n]['max']:.2g}" for n in LOSSES)
                + " |"
            )
    return "\n".join(out) + "\n"


def write_bands(path: Path, result: dict) -> None:
    """The table student runs read: loss -> T -> K -> mean gradient error (and the tail)."""
    rows = result["truncation"]["rows"]
    info = result["info"]
    keep = ("command", "date", "machine", "teacher", "photos", "views", "records", "classes",
            "student")  # fmt: skip
    table = {
        "source": {**{key: info[key] for key in keep}, "doc": "docs/choosing-k-t-precision.md"},
        "errors": {
            name: {
                f"{t:g}": {
                    str(r["k"]): round(r["gradient_error"][name]["mean"], 6)
                    for r in rows
                    if r["temperature"] == t
                }
                for t in sorted({r["temperature"] for r in rows})
            }
            for name in LOSSES
        },
        "tail_mass": {
            f"{t:g}": {
                str(r["k"]): round(r["tail_mass"]["mean"], 6) for r in rows if r["temperature"] == t
            }
            for t in sorted({r["temperature"] for r in rows})
        },  # fmt: skip
    }
    path.write_text(json.dumps(table, indent=1) + "\n")


def merge(paths: list[str]) -> dict:
    """One result from runs over parts of the K grid (rows sorted by K, then T)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    result = parts[0]
    rows = [row for part in parts for row in part["truncation"]["rows"]]
    result["truncation"]["rows"] = sorted(rows, key=lambda r: (r["k"], r["temperature"]))
    result["info"]["command"] = " ".join(
        [part["info"]["command"] for part in parts]
    )  # every part's command, in order
    result["info"]["merged_from"] = paths
    for key in ("truncation_s",):
        result["times_s"][key] = sum(part["times_s"].get(key, 0.0) for part in parts)
    result["bands"] = band_table(result["truncation"]["rows"])
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.merge:
        result = merge(args.merge)
        print_tables(result)
        Path(args.json).write_text(json.dumps(result, indent=1))
        if args.bands:
            write_bands(Path(args.bands), result)
        if args.markdown:
            Path(args.markdown).write_text(markdown_tables(result))
        return 0
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]
    temps = [float(t) for t in args.temps.split(",")]
    times = {}
    start = time.perf_counter()
    photos, cache = real_teacher.build_full_cache(workdir, args.views)
    times["teacher_pass_s"] = time.perf_counter() - start
    start = time.perf_counter()
    run_dir = train_student(workdir, photos, cache, args.student_steps, args.student_size)
    logits_s = student_logits(run_dir, photos, cache)
    times["student_s"] = time.perf_counter() - start
    dense = real_teacher.load_dense(cache)
    v, n, c = dense["logits"].shape
    teacher = dense["logits"].reshape(v * n, c)
    labels = np.tile(dense["labels"], v)
    student = logits_s.reshape(v * n, c)
    agree = float((teacher.argmax(1) == student.argmax(1)).mean())
    if args.part == "precision":
        result = json.loads(Path(args.json).read_text())
        start = time.perf_counter()
        pks = [int(k) for k in args.precision.split(",")]
        result["precision"] = measure_precision(workdir, dense, logits_s, pks, temps, args.batch)
        result["times_s"]["precision_s"] = time.perf_counter() - start
        result["info"]["precision_command"] = " ".join([Path(sys.executable).name, *sys.argv])
        result["info"]["precision_date"] = datetime.date.today().isoformat()
        print_tables(result)
        Path(args.json).write_text(json.dumps(result, indent=1))
        if args.markdown:
            Path(args.markdown).write_text(markdown_tables(result))
        return 0
    start = time.perf_counter()
    truncation = measure_truncation(teacher, labels, student, ks, temps, args.batch)
    times["truncation_s"] = time.perf_counter() - start
    info = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "teacher": real_teacher.TEACHER,
        "photos": n, "views": v, "records": v * n, "classes": c,
        "teacher_top1_mean_prob": float(
            torch.softmax(torch.from_numpy(teacher).double(), 1).max(1).values.mean()
        ),
        "student": f"torchvision resnet18, {args.student_size}px, {args.student_steps} steps "
        "of PLD from the full cache",
        "student_teacher_top1_agreement": agree,
        "loss_defaults": {name: make_loss(name).params for name in LOSSES},
        "loadavg": os.getloadavg(),
    }  # fmt: skip
    result = {"info": info, "truncation": truncation, "times_s": times}
    result["bands"] = band_table(truncation["rows"])
    if args.precision and args.part == "all":
        start = time.perf_counter()
        pks = [int(k) for k in args.precision.split(",")]
        result["precision"] = measure_precision(workdir, dense, logits_s, pks, temps, args.batch)
        times["precision_s"] = time.perf_counter() - start
    print_tables(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    if args.bands:
        write_bands(Path(args.bands), result)
    if args.markdown:
        Path(args.markdown).write_text(markdown_tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
