"""What ``GET /health`` checks besides the model worker: that the model's source can still be read, and that the
server's log can still be written. Neither takes the server down: the model is in memory, and a log record that
cannot be written is dropped (counted), never raised into a request."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

LOGGERS = ("", "mmfuse", "mmfuse.serve", "uvicorn", "uvicorn.error", "uvicorn.access")
"""Loggers whose handlers :meth:`LogWatch.watch_all` watches: the root and the server's own."""


def unreadable(source: str | os.PathLike[str]) -> str | None:
    """Why the model's ``source`` (a run, checkpoint or export folder, or an ``.onnx`` file) can no longer be read,
    or ``None`` when it can: the folder is listed, a file's first byte read."""
    path = Path(source)
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
    except OSError as e:
        return e.strerror or str(e)
    return None


class LogWatch:
    """Counts the log records that could not be written (a full disk under a redirected stderr, a closed pipe)
    by the handlers it watches, instead of the traceback per record that :mod:`logging` prints (into the same
    stream that just failed)."""

    def __init__(self) -> None:
        self.lost = 0
        self.reason: str | None = None
        self.where: str | None = None
        self._watched: set[int] = set()
        self._lock = threading.Lock()

    @property
    def failed(self) -> bool:
        return self.lost > 0

    def problem(self) -> str:
        return (
            f"{self.lost} log record(s) could not be written to {self.where} ({self.reason}) and were dropped; "
            "free space where the server's output goes (or send it elsewhere)"
        )

    def watch(self, handler: logging.Handler) -> None:
        """Routes ``handler``'s write failures to this watch (its other errors stay as logging reports them)."""
        if id(handler) in self._watched:
            return
        self._watched.add(id(handler))
        report = handler.handleError

        def handle_error(record: logging.LogRecord) -> None:
            error = sys.exc_info()[1]
            if not isinstance(error, OSError):
                report(record)
                return
            with self._lock:
                self.lost += 1
                self.reason = error.strerror or str(error)
                stream = getattr(handler, "stream", None)
                self.where = repr(getattr(handler, "baseFilename", None) or getattr(stream, "name", "the log"))

        handler.handleError = handle_error  # type: ignore[method-assign]

    def watch_all(self, names: Iterable[str] = LOGGERS) -> None:
        """Watches every handler of the loggers ``names`` (call it once logging is configured)."""
        for name in names:
            for handler in logging.getLogger(name).handlers:
                self.watch(handler)
