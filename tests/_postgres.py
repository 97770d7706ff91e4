"""A real, private PostgreSQL server for tests: ``initdb`` in a temporary folder, ``pg_ctl start`` on a free port of
127.0.0.1 with its unix socket in that folder, stopped and deleted afterwards.

The binaries come from ``PATH`` or Debian's ``/usr/lib/postgresql/<version>/bin`` (``apt-get install postgresql``,
which ``make test-slow`` does when it may). ``initdb`` refuses to run as root, so as root the server runs as the
``postgres`` user (Debian's package creates it) through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "mmfuse"
"""The server's superuser (trust authentication: the server only answers on 127.0.0.1 and its private socket)."""


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why and how to fix it."""


def find_bindir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``.

    Raises:
        Unavailable: no ``initdb`` on PATH nor in /usr/lib/postgresql/*/bin.
    """
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if debian:
        return Path(debian[-1]).parent
    raise Unavailable(
        "PostgreSQL's initdb is not installed (not on PATH, nor in /usr/lib/postgresql/*/bin): "
        "apt-get install postgresql, or run `make test-slow`, which installs it when it may"
    )


def _runner() -> tuple[list[str], str | None]:
    """The command prefix that runs the server's programs, and the user that owns its folder (``None``: this one)."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable(
            "running as root, where initdb refuses to run, and there is no `postgres` user to run it as "
            "(apt-get install postgresql creates one)"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise Unavailable("running as root, where initdb refuses to run, and `runuser` (util-linux) is missing")
    return [runuser, "-u", "postgres", "--"], "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server in its own temporary folder. ``start()``, then ``create_database(name)`` for a URL, then
    ``stop()`` (which also deletes the folder)."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.prefix, owner = _runner()
        # not under pytest's tmp folder: as root that one is private to root, and the server runs as `postgres`
        self.root = Path(tempfile.mkdtemp(prefix="mmfuse-pg-"))
        if owner is not None:
            shutil.chown(self.root, user=owner)
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = _free_port()
        self.started = False

    def _run(self, program: str, *args: str) -> None:
        command = [*self.prefix, str(self.bindir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "120", "start")
        self.started = True

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL (``postgresql://``, no driver named)."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
