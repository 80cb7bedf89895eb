"""The run directory: config.json, metrics.jsonl, checkpoint.pt, best.pt, result.json.

A finished run is one whose result.json exists (sweeps skip those). Starting a run in a
folder that already holds one needs `resume=True`, and then the stored config must match.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.errors import CheckpointError
from pld_pipeline.student.run.checkpoint import (
    capture_rng_state,
    restore_rng_state,
    save_checkpoint,
)
from pld_pipeline.student.run.metrics_log import MetricsLog

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

# Fields a resumed run may change: they do not alter the trajectory (on CPU).
RESUMABLE_CHANGES = (
    "resume",
    "num_workers",
    "device",
    "decode",
    "checkpoint_every",
    "log_every",
    "cache",
    "dataset_root",
    "val_root",
    "run_dir",
    "timeout_s",
    "gpu_limit",
    # Only lets a run start from a flagged cache; absent from configs written before it.
    "allow_label_mismatch",
)


def current_manifest_hash(cache) -> str:  # noqa: ANN001 - storage.Location | str | None
    """The manifest hash a run on `cache` records ("none" without a cache)."""
    if cache is None:
        return "none"
    import storage  # noqa: PLC0415 - only when a finished run is checked

    with storage.open_cache(cache) as reader:
        return storage.manifest_hash(reader.manifest)


class RunDir:
    """Paths of one run's files and the rules for (re)starting in that folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.best = self.path / "best.pt"
        self.result = self.path / "result.json"
        self.metrics = MetricsLog(self.path / "metrics.jsonl")

    def is_finished(self) -> bool:
        """True when result.json exists."""
        return self.result.is_file()

    def finished_result(self, config: TrainConfig) -> dict[str, Any] | None:
        """result.json of a run finished with this config, or None when not finished.

        Raises:
            CheckpointError: the folder holds a finished run of another config (a sweep
                rerun with a changed base must not silently reuse the old results).
        """
        if not self.is_finished():
            return None
        if self.config.exists():
            stored = self._stored_config()
            diffs = _config_diff(stored, config.model_dump(mode="json"))
            if diffs:
                raise CheckpointError(
                    f"{str(self.path)!r} holds a finished run of another config ({diffs}); "
                    "pick another run_dir or sweep_dir, or delete the old run to redo it."
                )
        result = json.loads(self.result.read_text())
        current = current_manifest_hash(config.cache_location())
        if result.get("manifest_hash") != current:
            raise CheckpointError(
                f"{str(self.path)!r} holds a finished run trained on another cache (manifest "
                f"{str(result.get('manifest_hash'))[:12]} != {current[:12]} of "
                f"{config.cache!r}); pick another run_dir or sweep_dir for this cache."
            )
        return result

    def _stored_config(self) -> dict[str, Any]:
        """config.json as a config of this version: fields added since it was written
        (e.g. views_per_image) take their defaults, so an older run is not "another config"."""
        stored = json.loads(self.config.read_text())
        try:
            return TrainConfig.model_validate(stored).model_dump(mode="json")
        except ValueError:  # a field since removed or renamed: compare as written
            return stored

    def prepare(self, config: TrainConfig, write: bool = True) -> bool:
        """Check the folder, create it and write config.json; say whether to resume.

        Every DDP rank runs the checks (so all fail alike); only the writer (rank 0) writes.

        Returns:
            True when `config.resume` and checkpoint.pt exists.

        Raises:
            CheckpointError: the folder holds a run and resume is False, or resume is True
                and the stored config differs in a field that changes the run.
        """
        has_run = self.checkpoint.exists() or self.result.exists()
        if has_run and not config.resume:
            raise CheckpointError(
                f"Run directory {str(self.path)!r} already holds a run (checkpoint.pt or "
                "result.json); set resume=true to continue it or pick another run_dir."
            )
        if config.resume and self.config.exists():
            stored = self._stored_config()
            diffs = _config_diff(stored, config.model_dump(mode="json"))
            if diffs:
                raise CheckpointError(
                    f"Cannot resume {str(self.path)!r}: the config differs from the stored "
                    f"config.json in {diffs}; restore those values or pick another run_dir."
                )
        if write:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.config, config.model_dump(mode="json"))
        return config.resume and self.checkpoint.exists()

    def save_state(
        self,
        manifest_hash: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        epoch: int,
        best: dict[str, Any],
        history: list[dict[str, Any]],
        is_best: bool,
        in_epoch: dict[str, Any] | None = None,
    ) -> None:
        """Write checkpoint.pt (everything to resume) and, when `is_best`, best.pt (weights).

        `epoch` is the last finished epoch (-1 before the first); a checkpoint written in
        the middle of the next one also holds `in_epoch` ({"epoch", "totals"}: the steps
        done and the epoch's sums so far), from which a resumed run continues.
        """
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "best": best,
            "history": history,
            "rng": capture_rng_state(),
            "manifest_hash": manifest_hash,
        }
        if in_epoch is not None:
            state["in_epoch"] = in_epoch
        save_checkpoint(self.checkpoint, state)
        if is_best:
            save_checkpoint(
                self.best, {"model": state["model"], "epoch": epoch, "val_top1": best["top1"]}
            )

    def restore_state(
        self,
        state: dict[str, Any],
        manifest_hash: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Load a checkpoint's state into the run's objects and RNGs.

        Returns:
            (history, best) so far.

        Raises:
            CheckpointError: the checkpoint was trained on another cache.
        """
        if state.get("manifest_hash") != manifest_hash:
            raise CheckpointError(
                f"{self.checkpoint} was trained on another cache (manifest "
                f"{str(state.get('manifest_hash'))[:12]} != {manifest_hash[:12]}); point cache "
                "to the original or start a new run_dir."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        if "in_epoch" in state:
            where = state["in_epoch"]
            logger.info(
                "Resumed %s in epoch %d after step %d",
                self.path, where["epoch"], where["totals"]["steps"],
            )  # fmt: skip
        else:
            logger.info("Resumed %s after epoch %d", self.path, state["epoch"])
        return list(state["history"]), dict(state["best"])

    def write_result(self, result: dict[str, Any]) -> None:
        """Write result.json (atomically: a run is finished exactly when it appears)."""
        write_json_atomic(self.result, result)


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if not prefix and key in RESUMABLE_CHANGES:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, prefix=f"{path}.")
        elif a != b:
            diffs.append(f"{path}: {a!r} -> {b!r}")
    return diffs


def write_json_atomic(path: Path, data: Any) -> None:
    """json.dump to a temp file in the same folder, then os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
