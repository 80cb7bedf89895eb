"""What every config shares: unknown keys refused, and the random-resized-crop defaults.

Kept free of torch so that reading a config stays fast (the CLI finds config errors
before torch or Prefect load); `pld_pipeline.views` takes its defaults from here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# torchvision's RandomResizedCrop defaults: area fraction and aspect ratio ranges.
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


class StrictModel(BaseModel):
    """A config section: an unknown key is a typo, refused instead of silently ignored."""

    model_config = ConfigDict(extra="forbid")
