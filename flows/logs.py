"""One logger choice for flow helpers: the run's logger inside a flow or task (shown in the UI), else the module's."""

from __future__ import annotations

import logging

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger


def run_logger_or(fallback: logging.Logger) -> logging.Logger | logging.LoggerAdapter:
    """The current flow or task run's logger; `fallback` outside any run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return fallback
