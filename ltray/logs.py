"""ltray's own lines on a terminal: the INFO records of the ``ltray.*`` loggers, one line each.

Every module logs with ``logging.getLogger(__name__)``. The ``ltray`` CLI and the jobs print those records
through one handler on the "ltray" logger (``lines_to``); imported as a library, ltray adds no handler, so
nothing is printed below WARNING unless the program configures logging itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

ROOT = "ltray"


class _Lines(logging.Handler):
    """Each record's message, %-args applied, handed to `write`."""

    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(record.getMessage())
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def lines_to(write: Callable[[str], None]) -> Iterator[None]:
    """INFO and above of the ltray.* loggers go to ``write(line)`` until the body ends (records still
    propagate, to pytest's caplog for one)."""
    lg = logging.getLogger(ROOT)
    handler, level = _Lines(write), lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        lg.removeHandler(handler)
        lg.setLevel(level)


def print_line(msg: str) -> None:
    print(msg, flush=True)


def call_printing_lines(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with ltray's lines printed on stdout: what a Ray task runs, as Ray shows a
    task's stdout in the driver's output (and the job's log)."""
    with lines_to(print_line):
        return fn(*args, **kwargs)
