"""benchmarks/gpu_check.sh: valid bash, and on a machine without a GPU (where the tests run) it refuses with a message
instead of training on the CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, **env}  # the test's interpreter and mmfuse
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], env=full, capture_output=True, text=True, timeout=120, check=False
    )


def test_gpu_check_is_valid_bash() -> None:
    assert shutil.which("bash"), "bash is needed to run benchmarks/gpu_check.sh"
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run the check")
def test_gpu_check_refuses_without_a_gpu(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("gpu_check: error: no CUDA GPU is visible to torch on this machine")
    assert "run this check on a machine with GPUs" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_gpu_check_names_a_bad_setting(tmp_path: Path) -> None:
    done = _run(tmp_path, MIXED_PRECISION="fp8")
    assert done.returncode == 2
    assert "MIXED_PRECISION=fp8; use bf16 or fp16" in done.stderr
