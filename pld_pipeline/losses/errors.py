"""Errors raised by the losses when their inputs are unusable."""

from __future__ import annotations

from pld_pipeline.errors import PLDError

__all__ = ["LossInputError", "TemperatureNotCachedError"]


class LossInputError(PLDError, ValueError):
    """Student logits, teacher targets, labels or loss parameters are unusable.

    The message names what is wrong, the value seen and the fix.
    """


class TemperatureNotCachedError(LossInputError):
    """A temperature was asked of cached targets that were not cached at it.

    Deliberately not a ``KeyError``: its message is meant to be read as is.
    """
