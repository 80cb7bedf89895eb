"""The result of a student run: what result.json holds and the flows tabulate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.student.data.epoch_views import distinct_views
from pld_pipeline.student.data.target_plan import TargetPlan
from pld_pipeline.student.run.eval_metrics import METRIC_GOALS


@dataclass
class RunResult:
    """What a finished run reports (also written to run_dir/result.json).

    Accuracies, ECE and confidence are percentages, NLL is in nats (definitions:
    `pld_pipeline.student.run.eval_metrics`). `best_epoch` is the epoch of the best top-1 (the weights in
    best.pt); `final_*` are the last epoch's. `metrics` holds, for each evaluated metric,
    its best value over the evaluated epochs with that epoch (max for top1/top5, min for
    nll/ece; none for confidence, which has no better direction), its final value, and its
    value at `best_epoch`. `final` is the last epoch's record, `history` all of them.
    `temperature` and `loss_params` are the loss's resolved values (defaults filled in).
    `mean_dropped_weight` is the mean teacher weight PLD dropped per sample (compact targets;
    None otherwise). `distinct_views` counts the cached views the run used. With
    `views_per_image` m every epoch trains m views of each image (one decode), so the run
    saw `samples_seen` = epochs * N * m samples: `sample_epochs` = epochs * m is the epoch
    count of an m = 1 run that sees as many samples. `unreadable_images` counts the
    training images left out because they could not be read, summed over epochs (an
    image unreadable for 100 epochs counts 100; each epoch's count is in its record).
    """

    run_dir: str
    student: str
    loss: str
    temperature: float | None
    loss_params: dict[str, Any]
    cache: str
    manifest_hash: str
    cache_format: str
    k: int
    target_form: str
    online: bool
    views_match: bool
    distinct_views: int
    epochs: int
    world_size: int
    final_top1: float | None
    final_top5: float | None
    best_top1: float | None
    best_epoch: int | None
    final_nll: float | None
    final_ece: float | None
    final_confidence: float | None
    mean_dropped_weight: float | None
    train_time_s: float
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    views_per_image: int = 1
    sample_epochs: int | None = None
    samples_seen: int | None = None
    unreadable_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the content of result.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """Rebuild from `to_dict()` output (e.g. a sweep reading finished runs' result.json)."""
        return cls(**data)


def build_result(
    config: TrainConfig,
    plan: TargetPlan,
    loss_params: dict[str, Any],
    world_size: int,
    best: dict[str, Any],
    history: list[dict[str, Any]],
) -> RunResult:
    """Summarise a run from its config, target plan and per-epoch records."""
    last = history[-1] if history else {}
    dropped = [r["dropped_weight"] for r in history if r.get("dropped_weight") is not None]
    return RunResult(
        run_dir=config.run_dir,
        student=config.student.name,
        loss=config.loss.name,
        temperature=loss_params.get("temperature"),
        loss_params=dict(loss_params),
        cache=config.cache,
        manifest_hash=plan.manifest_hash,
        cache_format=plan.cache_format,
        k=plan.k,
        target_form=plan.form,
        online=config.online_teacher is not None,
        views_match=plan.views_match,
        distinct_views=(
            distinct_views(config.epochs, plan.num_views, views_per_image=config.views_per_image)
            if plan.replay_cache
            else 1
        ),
        epochs=config.epochs,
        world_size=world_size,
        final_top1=last.get("val_top1"),
        final_top5=last.get("val_top5"),
        best_top1=best["top1"],
        best_epoch=best["epoch"],
        final_nll=last.get("val_nll"),
        final_ece=last.get("val_ece"),
        final_confidence=last.get("val_confidence"),
        mean_dropped_weight=sum(dropped) / len(dropped) if dropped else None,
        train_time_s=sum(r.get("epoch_time_s", 0.0) for r in history),
        metrics=metric_summary(history, best["epoch"]),
        final=last,
        history=history,
        views_per_image=config.views_per_image,
        sample_epochs=config.epochs * config.views_per_image,
        samples_seen=sum(int(r.get("samples", 0)) for r in history),
        unreadable_images=sum(int(r.get("unreadable_images", 0)) for r in history),
    )


def metric_summary(
    history: list[dict[str, Any]], best_epoch: int | None
) -> dict[str, dict[str, Any]]:
    """Per metric: best value and its epoch, final value, value at `best_epoch` (top-1's best).

    Only epochs that were evaluated count; the final value is the last evaluated epoch's
    (the last epoch always evaluates). Metrics never evaluated are left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, goal in METRIC_GOALS.items():
        key = f"val_{name}"
        points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
        if not points:
            continue
        entry: dict[str, Any] = {"best": None, "best_epoch": None}
        if goal is not None:
            pick = max if goal == "max" else min
            # The first epoch reaching the best value wins a tie, as for best.pt.
            epoch, value = pick(points, key=lambda p: p[1])
            entry = {"best": value, "best_epoch": epoch}
        entry["final"] = points[-1][1]
        entry["final_epoch"] = points[-1][0]
        entry["at_best_epoch"] = next((v for e, v in points if e == best_epoch), None)
        out[name] = entry
    return out
