"""Progress of long work (feature extraction, training, validation, prediction, evaluation), shown the same way
everywhere.

:class:`Progress` is what every long loop advances, batch by batch:

- on a terminal: a tqdm bar on stderr (none when quiet);
- off a terminal (CI, ``nohup``, ``2> log``): a plain line on stderr at most every ``$MMFUSE_PROGRESS_SECONDS``
  seconds (default 30), with done/total, the rate and the time left, e.g.
  ``features train: 1200/5000 ex (24%), 12.3 ex/s, elapsed 01:37, ETA 05:09``; a step that printed such a line
  ends with one more. Quiet does not turn these off: a log with no line for many minutes cannot be told from a
  hung job. ``MMFUSE_PROGRESS_SECONDS=off`` does;
- in every case the same lines, at the same pace, go to the ``mmfuse.progress`` logger, so into a run's
  ``train.log``.

Only the main process of a multi-process (accelerate) run shows anything. Lines are checked for after each batch
(no background thread), so one batch slower than the interval delays the next line.

:class:`Reporter` is what a run (training, predicting, evaluating) shows: its messages and the bars of its steps,
at one pace. The module imports no other part of mmfuse but :mod:`mmfuse._writable` (which imports none), so
every layer from the model up can use it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from mmfuse._writable import raise_injected, unwritable

logger = logging.getLogger("mmfuse.progress")
run_logger = logging.getLogger("mmfuse.engine")  # a run's messages (Reporter), under the name they have always had

LOG_FIX = "write the run to a writable folder"
"""How to put a run's log elsewhere, when its caller does not say (:meth:`Reporter.log_to`)."""

CONSOLE_WARNINGS = ("mmfuse.cache",)
"""Loggers whose warnings a run shows on the console too, not only in its log (:meth:`Reporter.log_to`): news from
layers that have no :class:`Reporter`, such as a feature cache folder that cannot be written or damaged cache shards
that were recomputed."""

ENV_SECONDS = "MMFUSE_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def progress_seconds() -> float | None:
    """Seconds between progress lines off a terminal: ``$MMFUSE_PROGRESS_SECONDS`` (default 30; ``0``: after
    every batch), ``None`` when it is ``off``.

    Raises:
        ValueError: a value that is neither a number >= 0 nor ``off``.
    """
    raw = os.environ.get(ENV_SECONDS, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    if raw.lower() == "off":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise ValueError(
            f"{ENV_SECONDS}={raw!r} is not a number of seconds; set it to a number >= 0 (e.g. 30, 0 for a line after "
            "every batch) or to off, or unset it"
        )
    return value


class LineClock:
    """When the next progress line is due: ``interval`` seconds after the last line (or after this clock was made).

    One clock shared by the steps of a run (its :class:`Reporter`) keeps the pace across
    them: twenty 25-second epochs still give a line every 30 s.

    Args:
        interval: seconds between lines; ``None``: no lines.
        clock: a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(self, interval: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last = clock()

    @classmethod
    def from_env(cls) -> LineClock:
        """A clock with the interval of ``$MMFUSE_PROGRESS_SECONDS`` (see :func:`progress_seconds`)."""
        return cls(progress_seconds())

    def due(self) -> bool:
        return self.interval is not None and self.clock() - self.last >= self.interval

    def mark(self) -> None:
        self.last = self.clock()


def is_main_process() -> bool:
    """Whether this process is the one that shows progress: rank 0 of an initialized process group, else of
    ``$RANK`` (set by ``accelerate launch`` / ``torchrun``), else ``True``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")


class Progress:
    """Progress of one step over ``total`` items; see the module docstring for what is shown where.

    Use it as a context manager and call :meth:`update` after each batch::

        with Progress(len(examples), "predict") as bar:
            for batch in loader:
                ...
                bar.update(len(batch))

    Args:
        total: items the step will do (``None``: unknown; no percentage or ETA).
        desc: what the step is (``features train``, ``epoch 3/10``, ``predict``).
        unit: what an item is, for the rate.
        quiet: no bar on a terminal (the lines off a terminal and in the log stay).
        enabled: ``False`` shows nothing at all (processes other than the main one).
        stream: where the bar and the lines go (default ``sys.stderr`` at creation); a terminal or not by its
            ``isatty()``.
        lines: when lines are due (default: a new :class:`LineClock` from ``$MMFUSE_PROGRESS_SECONDS``); its clock
            also times the rate and ETA.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "ex",
        quiet: bool = False,
        enabled: bool = True,
        stream: TextIO | None = None,
        lines: LineClock | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = _isatty(self.stream)
        self.lines = lines if lines is not None else (LineClock.from_env() if enabled else LineClock(None))
        self.n = 0
        self.start = self.lines.clock()
        self.postfix = ""
        self.printed: int | None = None  # the count shown by this step's last line (None: no line yet)
        self.bar: Any = None
        if enabled and self.terminal and not quiet:
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=self.stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(finished=exc_type is None)

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more items done; writes a line when one is due."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        if self.enabled and self.lines.due():
            self._line()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """Values shown after the counts (``loss=0.6931``), in the bar and in the next lines."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(refresh=refresh, **values)

    def close(self, finished: bool = True) -> None:
        """Removes the bar; a step that wrote lines (a long one) ends with a line of its final count when it
        ``finished``."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled and finished and self.printed is not None and self.printed != self.n:
            self._line()
        self.enabled = False  # closed: nothing more

    def line(self) -> str:
        """The progress line as it stands: done/total, percentage, rate, elapsed time, time left, postfix."""
        elapsed = max(self.lines.clock() - self.start, 0.0)
        rate = self.n / elapsed if elapsed > 0 else None
        done = f"{self.n}/{self.total if self.total is not None else '?'} {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        parts = [done, _rate(rate, self.unit), f"elapsed {tqdm.format_interval(elapsed)}"]
        if self.total is not None:
            left = (self.total - self.n) / rate if rate else None
            parts.append("done" if self.n >= self.total else f"ETA {_interval(left)}")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts)

    def _line(self) -> None:
        text = self.line()
        logger.info(text)
        if not self.terminal:
            print(text, file=self.stream, flush=True)
        self.lines.mark()
        self.printed = self.n


class Reporter:
    """What a run shows: progress and messages on the console (unless quiet or not the main process), and
    every message and progress line in the run's log file.

    Args:
        quiet: no progress bars and no console messages (the log still gets them; off a terminal the periodic
            progress lines stay on the console too, see the module docstring).
        main: whether this is the main process (others stay silent).

    Raises:
        ValueError: a bad ``$MMFUSE_PROGRESS_SECONDS``.
    """

    def __init__(self, quiet: bool = False, main: bool = True) -> None:
        self.quiet = quiet or not main
        self.main = main
        self.lines = LineClock.from_env() if main else LineClock(None)  # one pace for all the run's steps

    def info(self, message: str) -> None:
        run_logger.info(message)
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def warning(self, message: str) -> None:
        run_logger.warning(message)
        if self.main:
            tqdm.write(f"warning: {message}", file=sys.stderr)

    def bar(self, total: int, desc: str, unit: str = "ex") -> Progress:
        """Progress of one step: a bar on a terminal (unless quiet), periodic lines off one and in the log."""
        return Progress(total, desc, unit=unit, quiet=self.quiet, enabled=self.main, lines=self.lines)

    @contextmanager
    def log_to(self, path: Path, *, fix: str = LOG_FIX) -> Iterator[None]:
        """Also writes the ``mmfuse`` loggers' records to ``path`` while the context is open (main process), and
        shows the warnings of :data:`CONSOLE_WARNINGS` on the console.

        A log file that cannot be opened or written on (a read-only folder, no permission, a full disk) does not
        stop the run: that is said once on the console, as every unwritable place is (``cannot write the run's log
        '<path>': <reason>; <what to do>``, ``fix`` saying how to write elsewhere), and the file gets nothing more.
        """
        if not self.main:
            yield
            return
        handler = _LogFile(path, fix)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        console = _ConsoleWarnings()
        root = logging.getLogger("mmfuse")
        old_level = root.level
        root.addHandler(handler)
        for name in CONSOLE_WARNINGS:
            logging.getLogger(name).addHandler(console)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            yield
        finally:
            root.removeHandler(handler)
            for name in CONSOLE_WARNINGS:
                logging.getLogger(name).removeHandler(console)
            root.setLevel(old_level)
            handler.close()


class _ConsoleWarnings(logging.Handler):
    """Prints warnings as :meth:`Reporter.warning` does (``warning: ...`` on stderr, around the bars)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(f"warning: {record.getMessage()}", file=sys.stderr)


class _LogFile(logging.FileHandler):
    """A run's log file, appended to record by record (so not written through ``write_atomic``, which replaces a file
    whole); when it cannot be opened or a record cannot be written (a full disk, a read-only folder, no
    permission), says so once on the console, instead of a traceback, and writes nothing more."""

    def __init__(self, path: Path, fix: str = LOG_FIX) -> None:
        super().__init__(path, encoding="utf-8", delay=True)
        self.failed = False
        self.fix = fix
        try:
            raise_injected(path)  # the tests' stand-in for a read-only or full mount (mmfuse._writable.FAULT_ENV)
            self.stream = self._open()
        except OSError as e:
            self._failed(e)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        self._failed(error)

    def close(self) -> None:
        try:
            super().close()
        except OSError as e:  # the last buffered records cannot be flushed either
            self._failed(e)

    def _failed(self, error: OSError) -> None:
        if self.failed:
            return
        self.failed = True
        message = unwritable(error, self.baseFilename, what="the run's log", fix=self.fix)
        tqdm.write(f"warning: {message}; the run goes on, and the log gets nothing more", file=sys.stderr)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _rate(rate: float | None, unit: str) -> str:
    if not rate:
        return f"? {unit}/s"
    if rate < 1:
        return f"{1 / rate:.1f} s/{unit}"
    return f"{rate:.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s"


def _interval(seconds: float | None) -> str:
    return "?" if seconds is None else tqdm.format_interval(seconds)
