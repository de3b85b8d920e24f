"""What a person sees of a long command: the project's own progress lines on the terminal, everything
else in a log file.

A progress line is `[stage] text`, a lowercase stage name in brackets: the trainer's `[text_only] epoch
3: ...` and `[cache] train: 812 products, 31.5 products/s`, the benchmark's `[frozen select] ...`, the
pipeline tasks' `[preprocess] rows in: 3221` (`progress()` writes one). The libraries' lines never start
so: theirs start with a level or a time (`I0000 00:00...`, `WARNING:absl:...`), `[KFP Executor ...]` or
`[libprotobuf WARNING ...`, or are the continuation of a multi-line message.

Within `quiet(log_file)` the process's file descriptors 1 and 2 point at the log file, so whatever
bypasses Python's streams lands there too: TensorFlow's C++ logs, Beam's worker processes (which
inherit them), a library writing to the descriptor. Python's sys.stdout is a router that copies
progress lines to the terminal, sys.stderr is the log, and Python logging (absl's, TensorFlow's,
Beam's, kfp's records) and warnings have one handler, into the log. No library is configured by name:
a new library's chatter goes to the log by default.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import sys
import traceback
from typing import Iterator, TextIO

from common.cli import UserError, one_line

PROGRESS_LINE = re.compile(r"\[[a-z][a-z0-9_ -]*\] ")
# The exception line of a Python traceback ("ValueError: ...", "apache_beam.x.RunnerError: ..."), the
# cause a failed subprocess names last.
_EXCEPTION_LINE = re.compile(r"(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)(?::\s|$)")
_TAIL_LINES = 2000


def progress(stage: str, text: str) -> None:
    """`text` as progress lines of `stage`, one per line of it."""
    for line in str(text).splitlines() or [""]:
        print(f"[{stage}] {line}", flush=True)


def is_progress(line: str) -> bool:
    return PROGRESS_LINE.match(line.lstrip()) is not None


def last_error(lines: list[str]) -> str | None:
    """The last exception line among `lines` (a traceback's last line names the exception and its message)."""
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return None


class _Router(io.TextIOBase):
    """sys.stdout inside `quiet()`: every line to the log, progress lines to the terminal too."""

    def __init__(self, terminal: TextIO, log: TextIO):
        self._terminal, self._log, self._partial = terminal, log, ""
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str, shown: bool | None = None) -> None:
        self._log.write(line + "\n")
        self.tail.append(line)
        if is_progress(line) if shown is None else shown:
            self._terminal.write(line.strip() + "\n")
            self._terminal.flush()

    def say(self, line: str) -> None:
        self.close_line()
        self._line(line, shown=True)

    def flush(self) -> None:
        self._log.flush()
        self._terminal.flush()

    def close_line(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""

    def fileno(self) -> int:  # a write to the descriptor itself goes to the log, as fd 1 does
        return self._log.fileno()


class Console:
    """The terminal of a command inside `quiet()` (or, verbose, the plain terminal): `say` shows a line
    of the command's own; `recent()` is what was written since `mark()`, to name a failure's cause."""

    def __init__(self, terminal: TextIO, log_file: str | None, router: _Router | None = None):
        self.log_file, self._terminal, self._router = log_file, terminal, router

    def say(self, line: str) -> None:
        if self._router is None:
            print(line, file=self._terminal, flush=True)
        else:
            self._router.say(line)

    def mark(self) -> None:
        if self._router is not None:
            self._router.close_line()
            self._router.tail.clear()

    def recent(self) -> list[str]:
        if self._router is None:
            return []
        self._router.close_line()
        return list(self._router.tail)

    def where(self) -> str:
        """Where an error line sends the reader for the details."""
        return f"log: {self.log_file}" if self.log_file else "the output above has the details"


def _own_descriptor(stream: TextIO, fd: int) -> TextIO | None:
    """A new stream on a copy of descriptor `fd` when `stream` writes to it (a terminal, a pipe), so
    that it stays the terminal once `fd` points at the log; None when `stream` is something else (a
    test's capture), which then stays as it is."""
    try:
        if stream.fileno() != fd:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                     errors="replace")


@contextlib.contextmanager
def quiet(log_file: str, verbose: bool = False) -> Iterator[Console]:
    """Runs its body with only progress lines (and `Console.say`'s) on the terminal, the rest appended
    to `log_file`; `verbose` leaves every output where it goes. An exception other than a UserError
    becomes a UserError, one line naming its cause and the log (the traceback is in the log)."""
    if verbose:
        yield Console(sys.stdout, None)
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    log = open(log_file, "a", buffering=1, encoding="utf-8", errors="replace")
    own_terminal = _own_descriptor(sys.stdout, 1)
    terminal = own_terminal or sys.stdout
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    for fd in saved:
        os.dup2(log.fileno(), fd)
    streams = sys.stdout, sys.stderr
    router = _Router(terminal, log)
    sys.stdout, sys.stderr = router, log
    # Python logging (absl's handler included, which it replaces for the while) and warnings to the log,
    # timestamped: a handler made earlier may hold a stream that is not a descriptor (a test's capture).
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    to_log = logging.StreamHandler(log)
    to_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [to_log]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield Console(terminal, log_file, router)
    except UserError:
        raise
    except Exception as e:
        traceback.print_exc(file=log)
        raise UserError(f"{one_line(e)} (the traceback is in {log_file})") from None
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = handlers
        root.setLevel(level)
        router.close_line()
        sys.stdout, sys.stderr = streams
        log.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        if own_terminal is not None:
            own_terminal.close()
        log.close()
