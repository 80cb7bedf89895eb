"""What every config shares: unknown keys refused, the random-resized-crop defaults, and the
mixed-precision vocabulary of the teacher pass and student training.

Kept free of torch so that reading a config stays fast (the CLI finds config errors
before torch or Prefect load); `pld_pipeline.views` takes its defaults from here.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict

logger = logging.getLogger(__name__)

# torchvision's RandomResizedCrop defaults: area fraction and aspect ratio ranges.
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


class StrictModel(BaseModel):
    """A config section: an unknown key is a typo, refused instead of silently ignored."""

    model_config = ConfigDict(extra="forbid")


# One AMP vocabulary for both wings; `pld_pipeline.device_policy.resolve_amp` turns a word
# into an autocast dtype.
AmpName = Literal["auto", "bf16", "fp16", "off"]
AMP_NAMES: tuple[str, ...] = get_args(AmpName)
AMP_ALIASES = {"none": "off"}  # the student config's spelling before the vocabularies merged
AMP_DESCRIPTION = (
    "mixed precision (autocast) on CUDA: 'auto' = bf16 where the GPU supports it, else fp16; "
    "'bf16'; 'fp16' (students use a GradScaler); 'off' = fp32. CPU runs are fp32 whatever "
    "the value. 'none' is read as 'off' (deprecated spelling)"
)


def amp_alias(value: Any) -> Any:
    """A deprecated AMP spelling -> its word in `AMP_NAMES`, with a log line saying so; any
    other value unchanged (the Literal then refuses an unknown word)."""
    if isinstance(value, str) and value in AMP_ALIASES:
        word = AMP_ALIASES[value]
        logger.warning(
            "amp=%r is deprecated and read as amp=%r; write %r in new configs.", value, word, word
        )
        return word
    return value


Amp = Annotated[AmpName, BeforeValidator(amp_alias)]
