"""What every command line of the project shares (`python -m pipeline ...`, `python -m components.preprocess`):
a mistake the user can fix is one line on stderr, never a traceback."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
from typing import Iterator


class UserError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""


def one_line(error: BaseException) -> str:
    """An exception as one line. A Beam runner re-raises a worker's exception with the worker's whole
    traceback in its message; the last line of that is the exception itself, with the failed step."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    return last if len(lines) > 1 and ": " in last else f"{type(error).__name__}: {last}"


def check_local_inputs(catalog: str = "", bert_handle: str = "", image_weights: str | None = "") -> None:
    """Local paths given to a command exist (URIs and "imagenet" are left to the loaders; an empty
    argument is not checked)."""
    for name, path in (("--bert-handle", bert_handle), ("--image-weights", image_weights)):
        if path and "://" not in path and path != "imagenet" and not os.path.exists(path):
            raise UserError(f"{name} {path} does not exist: run scripts/setup_encoders.sh (see README)")
    if catalog and "://" not in catalog and not glob.glob(catalog):
        raise UserError(f"catalog {catalog} does not exist")


# Where Beam logs a failed step's traceback before raising it: in this process (in_memory) and as relayed
# from its worker processes (multi_processing).
BEAM_FAILURE_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.portability.local_job_service")


class _DropTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno >= logging.ERROR
            and (record.exc_info or "Traceback (most recent call last)" in record.getMessage())
        )


@contextlib.contextmanager
def beam_tracebacks_dropped(enabled: bool = True) -> Iterator[None]:
    """Within it, Beam does not log the tracebacks of a failed step: the command prints that failure as
    one line (`one_line`) instead, or with --traceback (enabled=False) the whole traceback."""
    quiet = _DropTracebacks()
    loggers = [logging.getLogger(name) for name in BEAM_FAILURE_LOGGERS] if enabled else []
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
