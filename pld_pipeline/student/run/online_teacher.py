"""Online mode: the teacher run live on every batch (same views), to measure what the cache saves.

The targets have the same form as the cached ones (compact top-K with the manifest's
temperatures, or dense logits), computed by the same `teacher.outputs.logits_to_records`
the teacher pass uses, so only where they come from differs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from pld_pipeline.errors import ConfigError
from pld_pipeline.losses import CachedTargets
from pld_pipeline.teacher.models import load_teacher
from pld_pipeline.teacher.outputs import logits_to_records
from pld_pipeline.views import normalize_batch

if TYPE_CHECKING:
    from pld_pipeline.configs.train import TrainConfig
    from pld_pipeline.student.data.target_plan import TargetPlan
    from pld_pipeline.student.run.placement import Placement

logger = logging.getLogger(__name__)


class OnlineTeacher:
    """A frozen teacher on the training device that turns image batches into targets."""

    def __init__(
        self,
        config,  # noqa: ANN001 - configs.cache.TeacherConfig
        device: torch.device,
        num_classes: int,
        form: str,
        k: int,
        temperatures: Sequence[float],
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        cached_teacher: str | None = None,
    ) -> None:
        """Build the teacher of `config` (weights from local files only).

        Raises:
            ConfigError: its class count differs from the cache's.
        """
        loaded = load_teacher(config)
        if loaded.info.num_classes != num_classes:
            raise ConfigError(
                f"Online teacher {config.name!r} has {loaded.info.num_classes} classes but the "
                f"cache has {num_classes}; use the cache's teacher."
            )
        if cached_teacher is not None and cached_teacher != loaded.info.name:
            logger.warning(
                "Online teacher %r is not the cached teacher %r: targets differ from the cache's.",
                config.name,
                cached_teacher,
            )
        memory = torch.channels_last if channels_last else torch.contiguous_format
        self.model = loaded.model.to(device, memory_format=memory).eval().requires_grad_(False)
        self.preprocess = loaded.preprocess
        self.device, self.form, self.k = device, form, k
        self.temperatures = tuple(float(t) for t in temperatures)
        self.amp_dtype, self.channels_last = amp_dtype, channels_last

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    @property
    def interpolation(self) -> str:
        return self.preprocess.interpolation

    @torch.no_grad()
    def targets(self, images: torch.Tensor, labels: torch.Tensor) -> CachedTargets | torch.Tensor:
        """Teacher targets of a batch.

        Args:
            images: uint8 [B, 3, S, S] at the teacher's input size.
            labels: [B] int64 on the device.

        Returns:
            CachedTargets (compact) or float32 logits [B, C] (dense), on the device.
        """
        x = normalize_batch(
            images, self.preprocess.mean, self.preprocess.std, self.device, self.channels_last
        )
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            logits = self.model(x).float()
        if self.form == "dense":
            return logits
        rec = logits_to_records(logits, labels, "topk", self.k, self.temperatures, validate=False)
        return CachedTargets(
            topk_idx=rec["topk_idx"],
            topk_logp=rec["topk_logp"],
            lse=rec["lse"],
            temperatures=self.temperatures,
            gt_logit=rec["gt_logit"],
        )


def make_online_teacher(
    config: TrainConfig,
    plan: TargetPlan,
    manifest: Any,
    loss_params: dict[str, Any],
    placement: Placement,
) -> OnlineTeacher | None:
    """The live teacher of online mode, or None (the cached path never builds a teacher)."""
    if config.online_teacher is None:
        return None
    # A live teacher can give any temperature: the cached ones, T = 1 and the loss's.
    temperatures = set(manifest.temperatures) | {1.0}
    if loss_params.get("temperature") is not None:
        temperatures.add(float(loss_params["temperature"]))
    return OnlineTeacher(
        config.online_teacher,
        placement.device,
        plan.num_classes,
        plan.form,
        plan.k,
        sorted(temperatures),
        placement.amp_dtype,
        placement.channels_last,
        manifest.teacher.name,
    )
