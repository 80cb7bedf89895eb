"""What the `pld` command prints on the terminal: logs without tracebacks, one line per error.

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
from typing import Any

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
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            terminal = getattr(handler, "stream", None) in (sys.stderr, sys.stdout) or (
                type(handler).__name__ == "PrefectConsoleHandler"
            )
            if terminal and not isinstance(handler.formatter, WithoutTraceback):
                handler.setFormatter(WithoutTraceback(handler.formatter))


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


def report_error(command: str, exc: BaseException, verbose: bool, stop_server: bool) -> None:
    """Print the error as the last line on stderr (its traceback first with `verbose`).

    `stop_server`: stop the temporary Prefect server first (see `stop_temporary_server`);
    only when this command started it, not a server running before (a test harness).
    """
    drain_prefect_queues()
    if stop_server:
        stop_temporary_server()
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    print(error_line(command, exc), file=sys.stderr)


def _temporary_server() -> Any:
    """Prefect's temporary server object (SubprocessASGIServer), or None when Prefect's
    server module was never imported (then no temporary server can be running)."""
    module = sys.modules.get("prefect.server.api.server")
    # The instance for "no port given" is the temporary server Prefect starts for flows.
    return None if module is None else module.SubprocessASGIServer()


def temporary_server_running() -> bool:
    """Whether Prefect's temporary server is running in this process now."""
    server = _temporary_server()
    return bool(server is not None and server.running)


def stop_temporary_server() -> None:
    """Stop Prefect's temporary server now, after its last logs are sent, instead of at exit.

    It would otherwise log "Stopping temporary server" after the error line. Nothing
    happens when no temporary server was started (e.g. PREFECT_API_URL names a server).
    """
    if not temporary_server_running():
        return
    try:
        drain_prefect_queues()  # the failed run's logs and events reach the server first
        _temporary_server().stop()
    except Exception:  # best effort: Prefect stops it at exit anyway
        logging.getLogger(__name__).debug("could not stop the temporary server", exc_info=True)


def drain_prefect_queues(timeout: float = 15.0) -> None:
    """Send the logs and events Prefect still queues, now rather than at exit.

    At exit Prefect drains them itself and, when the server is slow, logs "Still
    processing items" after the error line, which must stay the last line. Nothing happens
    when Prefect was never imported (a config error).
    """
    if "prefect.events.worker" not in sys.modules and "prefect.logging.handlers" not in sys.modules:
        return
    try:
        from prefect.events.worker import EventsWorker  # noqa: PLC0415 - Prefect is loaded
        from prefect.logging.handlers import APILogWorker  # noqa: PLC0415 - as above

        APILogWorker.drain_all(timeout=timeout)
        EventsWorker.drain_all(timeout=timeout)
    except Exception:  # best effort: Prefect drains them at exit anyway
        logging.getLogger(__name__).debug("could not drain Prefect's queues", exc_info=True)
