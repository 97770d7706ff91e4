"""A hub name with no network fails at once with the clear message (one probe of the hub, not the hub client's
retries for every file), and a model already in the local Hugging Face cache still loads.

The "hub" is a local socket that reads each request and resets the connection, as a network that drops does; the
models are built in a subprocess, since huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from _tiny import tiny_bert_dir

_SCRIPT = """
import json, sys
from mmfuse.encoders import build_text_encoder
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = "loaded, dim %d" % build_text_encoder(name).dim
    except Exception as e:
        out[name] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"""


class ResettingHub:
    """Listens on a local port; records each request's first line, then resets the connection."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self.requests.append(conn.recv(4096).decode("latin-1").split("\r\n")[0])
                except OSError:
                    self.requests.append("(nothing read)")
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()


@pytest.fixture
def hub() -> Iterator[ResettingHub]:
    server = ResettingHub()
    yield server
    server.close()


def _cache_model(hf_home: Path, repo: str, folder: Path) -> None:
    """Puts ``folder`` into the Hugging Face cache layout as the ``main`` revision of ``repo``."""
    commit = "0" * 40
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


@pytest.mark.slow  # a subprocess importing transformers: 10-15 s
def test_unreachable_hub_fails_fast_and_cached_models_still_load(hub: ResettingHub, tmp_path: Path) -> None:
    _cache_model(tmp_path / "hf", "org/cached", tiny_bert_dir())
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": hub.url,
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    env.pop("HF_HUB_CACHE", None)
    names = ["org/missing", "org/missing-too", "org/cached"]
    done = subprocess.run([sys.executable, "-c", _SCRIPT, *names], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in names[:2]:
        assert out[name].startswith(f"EncoderLoadError: could not load the text model config {name!r} from the "
                                    f"Hugging Face hub (cannot reach {hub.url} (")  # fmt: skip
        assert "save_pretrained(DIR)" in out[name]
    assert out["org/cached"] == "loaded, dim 32"
    # one probe of the hub for the whole process; no model file asked of it (the hub client retries each request
    # five times with back-off: 6 requests per file, about 23 s each, before this fix)
    assert hub.requests.count("HEAD / HTTP/1.1") == 1
    assert not [r for r in hub.requests if "/org/" in r], hub.requests
