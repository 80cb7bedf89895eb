"""The demo's stage configs (teacher run, cache, sweep) and its summary table, from DemoConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pld_pipeline.configs.cache import CacheConfig, TeacherConfig, ViewConfig
from pld_pipeline.configs.demo import DemoConfig
from pld_pipeline.configs.train import (
    LossConfig,
    OptimConfig,
    StudentConfig,
    SweepConfig,
    TrainConfig,
)

# Fashion-MNIST pixel statistics (grey, repeated over the 3 RGB channels).
MEAN = (0.286, 0.286, 0.286)
STD = (0.353, 0.353, 0.353)
# Views: milder crops than ImageNet's (0.08, 1): a 28-pixel garment has little to spare.
VIEW_SCALE = (0.6, 1.0)
SUMMARY_COLUMNS = ("model", "loss", "best_top1", "final_top5", "time_s", "note")


def _student(config: DemoConfig, name: str) -> StudentConfig:
    return StudentConfig(
        name=name, image_size=config.image_size, mean=MEAN, std=STD,
        eval_crop_pct=1.0, random_scale=VIEW_SCALE,
    )  # fmt: skip


def _optim(config: DemoConfig) -> OptimConfig:
    return OptimConfig(
        name="sgd", lr=config.lr, momentum=0.9, nesterov=True, weight_decay=5e-4,
        warmup_epochs=1.0,
    )  # fmt: skip


def teacher_train_config(config: DemoConfig, data_root: str) -> TrainConfig:
    """The teacher: supervised CE on the training split, with its own random crops."""
    return TrainConfig(
        cache=None, dataset_root=data_root, dataset_split="train",
        val_root=data_root, val_split="val",
        student=_student(config, config.teacher_model), loss=LossConfig(name="ce"),
        optim=_optim(config), epochs=config.teacher_epochs, batch_size=config.batch_size,
        run_dir=str(Path(config.workdir) / "teacher"), seed=config.seed, device=config.device,
        num_workers=config.num_workers, resume=True,
    )  # fmt: skip


def cache_config(config: DemoConfig, data_root: str) -> CacheConfig:
    """The teacher pass: `num_views` replayable views of every training image."""
    return CacheConfig(
        dataset_root=data_root, split="train",
        teacher=TeacherConfig(
            name=config.teacher_model,
            checkpoint=str(Path(config.workdir) / "teacher" / "best.pt"),
            num_classes=10, input_size=config.image_size, mean=MEAN, std=STD,
            interpolation="bilinear", crop_pct=1.0,
        ),
        views=ViewConfig(mode="replay", num_views=config.num_views, seed=config.seed,
                         scale=VIEW_SCALE),
        format="topk", k=config.k, temperatures=config.temperatures, shard_size=1024,
        output=str(Path(config.workdir) / "cache"), batch_size=256,
        num_workers=config.num_workers, device=config.device, replay_check_samples=8,
        min_label_agreement=config.min_label_agreement,
    )  # fmt: skip


def sweep_config(config: DemoConfig, data_root: str) -> SweepConfig:
    """The same tiny student once per loss, each at its recipe's default temperature."""
    base = TrainConfig(
        cache=str(Path(config.workdir) / "cache"), dataset_root=data_root, dataset_split="train",
        val_root=data_root, val_split="val",
        student=_student(config, config.student_model), loss=LossConfig(name="pld"),
        optim=_optim(config), epochs=config.student_epochs, batch_size=config.batch_size,
        run_dir=str(Path(config.workdir) / "sweep" / "base"), seed=config.seed,
        device=config.device, num_workers=config.num_workers, resume=True,
        views_per_image=config.views_per_image,
    )  # fmt: skip
    return SweepConfig(
        base=base, grid={"loss.name": list(config.losses)},
        sweep_dir=str(Path(config.workdir) / "sweep"), max_parallel=config.max_parallel,
    )  # fmt: skip


def summary_rows(
    rows: list[dict[str, Any]],
    teacher: dict[str, Any],
    cache_report: dict[str, Any],
    times: dict[str, float],
) -> list[dict[str, Any]]:
    """Teacher first, then one row per student loss, then the stage timings and cache size."""
    out = [{
        "model": "teacher", "loss": "ce", "best_top1": teacher["best_top1"],
        "final_top5": teacher["final_top5"], "time_s": times.get("teacher"),
        "note": teacher["student"],
    }]  # fmt: skip
    for row in rows:
        out.append({
            "model": "student", "loss": row["loss"], "best_top1": row["best_top1"],
            "final_top5": row["final_top5"], "time_s": row["time_s"], "note": row["status"],
        })  # fmt: skip
    cache_note = (
        f"{cache_report['num_views']} views x {cache_report['num_samples']} images, "
        f"K={cache_report['k']}, {cache_report['disk_mb']:.2f} MB on disk"
    )
    for stage in ("data", "cache", "sweep"):
        out.append({
            "model": f"stage:{stage}", "loss": None, "best_top1": None, "final_top5": None,
            "time_s": times.get(stage), "note": cache_note if stage == "cache" else "",
        })  # fmt: skip
    return out
