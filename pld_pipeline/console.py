"""What the `pld` command prints on the terminal: logs without tracebacks, one line per error.

Plain logging (no Prefect): it sits where its imports allow; `flows/cli.py` uses it.

A failing flow run makes Prefect log the exception with its traceback from every task and
flow it passes through. Prefect's API log handler sends those records, tracebacks
included, to the server (its logs and UI keep them); on the terminal a user's mistake
(a missing dataset, an uncached temperature) should read as one line that names the
problem and the fix. `--verbose` keeps every traceback on the terminal too.
"""

from __future__ import annotations

import logging
import sys
import traceback

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Per-request and cluster chatter that buries the run's own messages.
NOISY_LOGGERS = ("httpx", "httpcore", "distributed", "urllib3")


class WithoutTraceback(logging.Formatter):
    """Formats a record with another formatter, leaving out its traceback and stack.

    The record is restored afterwards, so handlers that run later (Prefect's API log
    handler) still send the traceback.
    """

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def configure_logging(verbose: bool) -> None:
    """INFO logs to stderr (tracebacks only with `verbose`), library chatter at WARNING."""
    handler = logging.StreamHandler()
    formatter = logging.Formatter(LOG_FORMAT)
    handler.setFormatter(formatter if verbose else WithoutTraceback(formatter))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def hide_tracebacks() -> None:
    """Leave tracebacks out of every terminal log handler configured so far.

    Call it after Prefect is imported: its logging set-up adds handlers of its own that
    write to the terminal (e.g. for its internal and server loggers).
    """
    for handler in _terminal_handlers():
        if not isinstance(handler.formatter, WithoutTraceback):
            handler.setFormatter(WithoutTraceback(handler.formatter))


def quiet_terminal() -> None:
    """Keep a command's last line last: what is logged while the process shuts down
    (Prefect draining its queues, stopping its temporary server) still reaches Prefect's
    API and files, but no longer the terminal."""
    for handler in _terminal_handlers():
        handler.setLevel(logging.CRITICAL + 1)


def _terminal_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [
        handler
        for logger in loggers
        for handler in getattr(logger, "handlers", [])
        if isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
    ]


def is_user_error(exc: BaseException) -> bool:
    """True for the errors the libraries raise on purpose (bad input, a run that cannot go on).

    `storage` is only consulted when it was imported: otherwise none of its errors can have
    been raised, and importing it would slow every config error down.
    """
    from pld_pipeline.errors import PLDError  # noqa: PLC0415 - keeps `pld --help` light

    types: list[type[BaseException]] = [PLDError]
    storage_errors = sys.modules.get("storage.errors")
    if storage_errors is not None:
        types.append(storage_errors.CacheError)
    return isinstance(exc, tuple(types))


def error_line(command: str, exc: BaseException) -> str:
    """`pld <command>: error: <message>`, the message's lines joined into one."""
    message = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"pld {command}: error: {message or type(exc).__name__}"


def report_error(command: str, exc: BaseException, verbose: bool) -> None:
    """Print the error as the command's last line on stderr (its traceback first with
    `verbose`)."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    print(error_line(command, exc), file=sys.stderr, flush=True)
    quiet_terminal()
