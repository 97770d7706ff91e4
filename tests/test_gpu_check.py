"""benchmarks/gpu_check.sh: valid bash, on a machine without a GPU (where the tests run) it refuses with a message
instead of training on the CPU, and its --dry-run prints commands that the installed accelerate and mmfuse accept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(tmp_path: Path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, **env}  # the test's interpreter and mmfuse
    return subprocess.run(
        ["bash", str(SCRIPT), *flags, str(tmp_path / "out")],
        env=full, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


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


def test_gpu_check_dry_run_prints_commands_that_the_installed_accelerate_and_mmfuse_accept(tmp_path: Path) -> None:
    """Without a GPU, ``--dry-run`` prints what the check would run: every launch option exists in the installed
    accelerate (its own parser reads them), the launched ``mmfuse train`` takes its options, and its overrides make a
    valid config. Nothing is written."""
    import shlex

    from accelerate.commands.launch import launch_command_parser
    from typer.main import get_command

    from mmfuse.cli import app
    from mmfuse.config import load_config

    done = _run(tmp_path, "--dry-run", GPUS="2", MIXED_PRECISION="fp16", BATCH_SIZE="32")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out").exists()  # nothing run, nothing written
    commands = [shlex.split(line) for line in done.stdout.splitlines()[1:] if not line.startswith("#")]
    assert [c[:2] for c in commands] == [[sys.executable, "-"]] + [[sys.executable, "-m"]] * 2 + [[sys.executable, "-"]]
    assert commands[0][2:] == [str(tmp_path / "out"), "early_fusion", "2000", "3"]  # the data and config step
    assert commands[-1][2:] == [str(tmp_path / "out"), "fp16", "1", "2"]  # the table, of one GPU then two
    group = get_command(app)
    for gpus, command in zip((1, 2), commands[1:3], strict=True):
        assert command[2] == "accelerate.commands.launch"
        launch = launch_command_parser().parse_args(command[3:])  # an option this accelerate lacks exits 2 here
        assert (launch.num_processes, launch.mixed_precision, launch.multi_gpu) == (gpus, "fp16", gpus > 1)
        assert launch.module and launch.training_script == "mmfuse"
        name, *args = launch.training_script_args
        with group.make_context("mmfuse", [name, *args], resilient_parsing=True) as parent:
            params = group.get_command(parent, name).make_context(name, args).params  # mmfuse train's options
        assert params["config"] == tmp_path / "out" / "config.yaml" and params["quiet"]
        config = load_config(None, params["overrides"])  # the demo's config is written only by a real run
        assert config.train.mixed_precision == "fp16" and config.train.batch_size == config.train.eval_batch_size == 32
        assert config.run.name == f"gpus{gpus}" and str(config.cache.dir) == str(tmp_path / "out" / f"cache-{gpus}")


def test_gpu_check_dry_run_refuses_a_bad_head_before_printing(tmp_path: Path) -> None:
    done = _run(tmp_path, "--dry-run", HEAD="nope")
    assert done.returncode == 2 and done.stdout == ""
    assert "HEAD=nope is not a demo head; use one of" in done.stderr and "early_fusion" in done.stderr
