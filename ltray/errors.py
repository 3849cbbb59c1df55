"""One base for the failures ltray explains to its user, so the CLI and the jobs report them alike."""

from __future__ import annotations


class LtrayError(Exception):
    """A failure with a cause the user can act on: one line (`str(e)`) and a `hint`. The CLI and the jobs
    print both and exit non-zero; anything else is a bug and keeps its traceback. Each subclass also
    derives from the builtin error it replaces (ValueError, RuntimeError), so existing handlers hold."""

    def __init__(self, message: str = "", hint: str | None = None):
        super().__init__(message)
        self.hint = hint


__all__ = ["LtrayError"]
