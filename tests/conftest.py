"""Shared test fixtures. Tests run on CPU, offline, with few threads (CI has 2 cores)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never write to the user's feature cache (~/.cache/mmfuse); tests of the cache name their own folder.
os.environ["MMFUSE_CACHE_DIR"] = "off"

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` beside the checkout (real MVSA-Single and MultiOFF); skips when absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests: tiny models gain nothing from two, and lose a lot when the cores are
    busy (oversubscribed threads spin-wait for each other). Restores the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- experiment tracking

_NO_TRACK_EXTRA = 'the track extra is not installed (pip install "mmfuse[track]")'


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite MLflow store with its tables made: MLflow's schema migrations take seconds, so they run once per
    session and tests use copies."""
    pytest.importorskip("mlflow", reason=_NO_TRACK_EXTRA)
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the database
    return path


@pytest.fixture(scope="session")
def mlflow_server(mlflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (a free port) with a SQLite backend store and its own artifact folder;
    yields its URL once its health endpoint answers, and stops it (its whole process group) afterwards."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow_server")
    db = root / "server.db"
    shutil.copy(mlflow_db, db)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 300  # a loaded 2-core machine took ~60 s to start it
            while True:
                if server.poll() is not None:
                    pytest.fail(f"mlflow server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not answer on {url}/health:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)  # poll interval
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


# ------------------------------------------------------------------------------------------- PostgreSQL


_DATABASES = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A real PostgreSQL server for the session (see tests/_postgres.py), stopped and deleted afterwards; skips, saying
    why, when none can be started here (no initdb, or root without a `postgres` user)."""
    from _postgres import PostgresServer, Unavailable

    try:
        server = PostgresServer()
    except Unavailable as e:
        pytest.skip(str(e))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: object, request: pytest.FixtureRequest) -> str:
    """The ``postgresql://`` URL of a new, empty database on the session's server (one per test)."""
    import re

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + f"_{next(_DATABASES)}"
    return postgres_server.create_database(name)  # type: ignore[attr-defined]
