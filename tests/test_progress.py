"""The progress helper with a fake clock: the interval between lines, done/total, rate and ETA, a bar on a terminal
and lines off one, quiet, the main process only, the $MMFUSE_PROGRESS_SECONDS setting."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from mmfuse.progress import ENV_SECONDS, LineClock, Progress, Reporter, is_main_process, progress_seconds


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stream(io.StringIO):
    """A text stream that says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def lines_of(stream: Stream) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def test_off_a_terminal_a_line_at_most_every_interval_with_done_total_rate_and_eta(caplog) -> None:
    clock, out = FakeClock(), Stream(tty=False)
    caplog.set_level(logging.INFO, logger="mmfuse.progress")
    with Progress(100, "features train", stream=out, lines=LineClock(30, clock)) as bar:
        for _ in range(10):  # 10 batches of 10 examples, 10 s each: a line is due after 30 s
            clock.now += 10
            bar.update(10)
        assert bar.bar is None  # no tqdm bar off a terminal
    lines = lines_of(out)
    # lines after 30, 60 and 90 s (3 batches each), and the last one on close
    assert lines == [
        "features train: 30/100 ex (30%), 1 ex/s, elapsed 00:30, ETA 01:10",
        "features train: 60/100 ex (60%), 1 ex/s, elapsed 01:00, ETA 00:40",
        "features train: 90/100 ex (90%), 1 ex/s, elapsed 01:30, ETA 00:10",
        "features train: 100/100 ex (100%), 1 ex/s, elapsed 01:40, done",
    ]
    # the same lines go to the logger (and so to a run's train.log)
    assert [r.getMessage() for r in caplog.records if r.name == "mmfuse.progress"] == lines


def test_rate_eta_and_postfix() -> None:
    clock, out = FakeClock(), Stream(tty=False)
    bar = Progress(1000, "epoch 2/5", stream=out, lines=LineClock(5, clock))
    clock.now += 4
    bar.update(250)  # 4 s < 5 s: not due yet
    assert lines_of(out) == []
    bar.set_postfix(loss="0.6931", refresh=False)
    clock.now += 6
    bar.update(250)  # 500 in 10 s: 50 ex/s, 500 left: 10 s
    assert lines_of(out) == ["epoch 2/5: 500/1000 ex (50%), 50 ex/s, elapsed 00:10, ETA 00:10, loss=0.6931"]
    clock.now += 990
    bar.update(1)  # slower than one example a second: seconds per example
    assert lines_of(out)[-1].startswith("epoch 2/5: 501/1000 ex (50%), 2.0 s/ex, elapsed 16:40, ETA 16:36")


def test_a_short_step_writes_no_line_and_a_failed_one_no_last_line() -> None:
    clock, out = FakeClock(), Stream(tty=False)
    with Progress(10, "predict", stream=out, lines=LineClock(30, clock)) as bar:
        clock.now += 29
        bar.update(10)
    assert lines_of(out) == []  # done before a line was due: nothing (short steps stay quiet)
    with pytest.raises(RuntimeError), Progress(10, "predict", stream=out, lines=LineClock(30, clock)) as bar:
        clock.now += 31
        bar.update(5)
        raise RuntimeError("boom")
    assert lines_of(out) == ["predict: 5/10 ex (50%), 6.2 s/ex, elapsed 00:31, ETA 00:31"]


def test_one_clock_keeps_the_pace_across_steps() -> None:
    """Epochs shorter than the interval still give a line every interval when they share the run's clock."""
    clock, out = FakeClock(), Stream(tty=False)
    lines = LineClock(30, clock)
    for epoch in range(1, 5):  # 4 epochs of 20 s
        with Progress(20, f"epoch {epoch}/4", stream=out, lines=lines) as bar:
            for _ in range(2):
                clock.now += 10
                bar.update(10)
    got = lines_of(out)
    # a line at 30 s (epoch 2, half way), so epoch 2 ends with one (at 40 s), and the next 30 s later (epoch 4)
    assert [line.split(",")[0] for line in got] == [
        "epoch 2/4: 10/20 ex (50%)",
        "epoch 2/4: 20/20 ex (100%)",
        "epoch 4/4: 10/20 ex (50%)",
        "epoch 4/4: 20/20 ex (100%)",
    ]


def test_on_a_terminal_a_bar_and_no_lines_on_the_console(caplog) -> None:
    clock, out = FakeClock(), Stream(tty=True)
    caplog.set_level(logging.INFO, logger="mmfuse.progress")
    with Progress(40, "predict", stream=out, lines=LineClock(30, clock)) as bar:
        assert bar.bar is not None  # tqdm draws on the terminal stream
        for _ in range(4):
            clock.now += 20
            bar.update(10)
    console = out.getvalue()
    assert "predict" in console and "/40 [" in console  # tqdm's bar
    assert "ETA" not in console  # no plain lines between the bar's redraws
    logged = [r.getMessage() for r in caplog.records if r.name == "mmfuse.progress"]
    assert logged[0] == "predict: 20/40 ex (50%), 2.0 s/ex, elapsed 00:40, ETA 00:40"  # the log still gets lines


def test_quiet_means_no_bar_but_lines_off_a_terminal_and_in_the_log(caplog) -> None:
    caplog.set_level(logging.INFO, logger="mmfuse.progress")
    for tty in (True, False):
        clock, out = FakeClock(), Stream(tty=tty)
        with Progress(10, "predict", quiet=True, stream=out, lines=LineClock(1, clock)) as bar:
            assert bar.bar is None
            clock.now += 2
            bar.update(10)
        assert lines_of(out) == ([] if tty else ["predict: 10/10 ex (100%), 5 ex/s, elapsed 00:02, done"])
    assert sum(r.name == "mmfuse.progress" for r in caplog.records) == 2


def test_other_processes_show_nothing(caplog, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="mmfuse.progress")
    for tty in (True, False):
        clock, out = FakeClock(), Stream(tty=tty)
        with Progress(10, "predict", enabled=False, stream=out, lines=LineClock(0, clock)) as bar:
            assert bar.bar is None
            clock.now += 2
            bar.update(10)
        assert out.getvalue() == ""
    assert not [r for r in caplog.records if r.name == "mmfuse.progress"]
    monkeypatch.setenv(ENV_SECONDS, "0")
    bar = Reporter(main=False).bar(10, "epoch 1/1")
    assert not bar.enabled and bar.bar is None
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()


@pytest.mark.parametrize(("value", "seconds"), [(None, 30.0), ("", 30.0), ("0", 0.0), ("2.5", 2.5), ("off", None)])
def test_interval_setting(monkeypatch: pytest.MonkeyPatch, value: str | None, seconds: float | None) -> None:
    if value is None:
        monkeypatch.delenv(ENV_SECONDS, raising=False)
    else:
        monkeypatch.setenv(ENV_SECONDS, value)
    assert progress_seconds() == seconds
    assert LineClock.from_env().interval == seconds


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_interval_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_SECONDS, value)
    with pytest.raises(ValueError, match=rf"MMFUSE_PROGRESS_SECONDS='{value}'.*number >= 0.*off"):
        progress_seconds()


def test_off_writes_no_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SECONDS, "off")
    out = Stream(tty=False)
    with Progress(10, "predict", stream=out) as bar:
        bar.update(10)
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("kind", "fix"),
    [("full", "free space on that disk, or"), ("read-only", "the filesystem is mounted read-only: "),
     ("no permission", "give this user write permission there, or")],
)  # fmt: skip
def test_a_run_log_that_cannot_be_written_is_said_once_with_the_fix_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, kind: str, fix: str
) -> None:
    """A full disk fails the log's writes; a read-only folder (or a log file this user may not write) fails its
    opening. Either way: one warning in the one form of every unwritable place (``cannot write <what> '<path>':
    <reason>; <fix>``, the fix for that reason), no traceback, and the run goes on."""
    import contextlib
    import errno
    import os

    from _unwritable import FAULT_ENV, REASONS, full_log_files, unwritable

    reporter = Reporter(quiet=True)
    with contextlib.ExitStack() as stack:
        if kind == "no permission":  # root writes any file: the fault hook stands in for a log this user may not write
            place = tmp_path / "place"
            place.mkdir()
            monkeypatch.setenv(FAULT_ENV, f"EACCES:{place}")
            reason = os.strerror(errno.EACCES)
        else:
            place = stack.enter_context(unwritable(kind, tmp_path / "place", monkeypatch))
            reason = REASONS[kind]
        if kind == "full":
            full_log_files(monkeypatch)  # where no mount is possible: the log file's stream is a full disk's
        with reporter.log_to(place / "train.log", fix="set run.out_dir to a writable folder"):
            for i in range(3):
                reporter.info(f"epoch {i}")  # each fails to reach the file
            reporter.warning("still said on the console")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cannot write the run's log" in line]
    assert len(lines) == 1, err
    assert f"cannot write the run's log {str(place / 'train.log')!r}: {reason}; {fix}" in lines[0]
    assert "set run.out_dir to a writable folder" in lines[0] and "the run goes on" in lines[0]
    assert "Traceback" not in err and "Logging error" not in err
    assert "warning: still said on the console" in err
