"""Every file in ``examples/`` runs on shrunk data: configs through the real CLI's train, evaluate, predict and
report; sweeps through sweep, ensemble and report; Python scripts as a user runs them.

The files are found by globbing ``examples/``, so a new example runs here without being listed; one of a kind this
test does not know (a config for a dataset layout it cannot shrink, a file that is no config, sweep or Python
script) fails it until it is taught. A Python script (``examples/python/*.py``, notebook-style) runs as a user runs
it, in a fresh interpreter in an empty folder, on :data:`SCRIPT_ROWS` rows of each split of the real data it reads
(``MMFUSE_EXAMPLE_ROWS``) with the same tiny encoders and one epoch (``MMFUSE_EXAMPLE_SET``).
Only what a laptop run cannot afford is changed, on the command line as a user would: the data (a few examples per
class and split of the same layout: real MVSA-Single and MultiOFF rows from ``../shared/datasets``, synthetic
memes for Hateful Memes), the encoders (tiny random ones from ``tests/_tiny.py``), the epochs of the base config,
a search's trial budget, and the output folders. Everything else (heads, optimisers, schedules, the sweep's trials
and their own epochs, baselines, selection metric) is the example's.

What those runs replace is checked apart, without the network and fast: each config and sweep base as shipped
resolves completely (its encoder names and options, its head's parameters: what ``mmfuse config show`` prints), and
every ``mmfuse train`` / ``mmfuse sweep`` command written in an example's comments names an existing example, uses
options the command has, and gives a valid config (the variants a reader is told to try).

The Hateful Memes configs run on synthetic memes, so they run where ``../shared/datasets`` is absent; the examples
that read the real datasets are skipped there, saying so.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from _tiny import tiny_bert_dir, tiny_clip_vision_dir
from _tiny_text import tiny_text_dir
from mmfuse.cli import app
from mmfuse.data import make_synthetic

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"  # the real data beside the checkout (tests/conftest.py's too)
FILES = sorted(p for p in EXAMPLES.rglob("*") if p.is_file())
PER_CLASS = 4  # examples per class in each split of a shrunk real dataset
SCRIPT_ROWS = 200  # rows of each split a Python example reads (it samples them, seeded)


def _id(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def _kind(path: Path) -> str:
    """``config``, ``sweep`` or ``script``; fails for a file this test cannot run yet."""
    if path.suffix == ".py":
        return "script"
    if path.suffix not in (".yaml", ".yml"):
        pytest.fail(f"examples/{_id(path)}: this test runs YAML configs, sweeps and Python scripts; teach it this file")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "base" in data:
        return "sweep"
    if isinstance(data, dict) and "model" in data and "data" in data:
        return "config"
    pytest.fail(f"examples/{_id(path)}: neither a training config (data:, model:) nor a sweep (base:)")


def _preset(path: Path) -> str | None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    base = data.get("base", data)
    if isinstance(base, str):  # a sweep whose base is a config file beside it
        base = yaml.safe_load((path.parent / base).read_text(encoding="utf-8"))
    return (base.get("data") or {}).get("preset")


def _copy(src: Path, dst: Path, relative: str) -> None:
    (dst / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / relative, dst / relative)


def _shrink_mvsa(src: Path, dst: Path) -> None:
    """``PER_CLASS`` rows per label of each QMF split file, with their images and text files (rows whose files
    are missing are left out: the defects of the real data are the loader tests' business, not this test's)."""
    for name in ("train", "dev", "test"):
        rows = [json.loads(line) for line in (src / "splits" / f"{name}.jsonl").read_text("utf-8").splitlines()]
        frame = pd.DataFrame(rows)
        whole = [(src / r.img).is_file() and (src / f"data/{r.id}.txt").is_file() for r in frame.itertuples()]
        kept = frame[whole].groupby("label", sort=False).head(PER_CLASS)
        (dst / "splits").mkdir(parents=True, exist_ok=True)
        kept.to_json(dst / "splits" / f"{name}.jsonl", orient="records", lines=True, force_ascii=False)
        for row in kept.itertuples():
            _copy(src, dst, row.img)
            _copy(src, dst, f"data/{row.id}.txt")


def _shrink_multioff(src: Path, dst: Path) -> None:
    """``PER_CLASS`` rows per label of each split file whose image is there, with their images."""
    for name in ("Training", "Validation", "Testing"):
        relative = f"Split Dataset/{name}_meme_dataset.csv"
        frame = pd.read_csv(src / relative, dtype=str, keep_default_na=False)
        present = [(src / "Labelled Images" / image).is_file() for image in frame["image_name"]]
        kept = frame[present].groupby("label", sort=False).head(PER_CLASS)
        (dst / relative).parent.mkdir(parents=True, exist_ok=True)
        kept.to_csv(dst / relative, index=False)
        for image in kept["image_name"]:
            _copy(src, dst, f"Labelled Images/{image}")


REAL_PRESETS = ("mvsa_single", "multioff")
"""Presets whose shrunk copy is cut from the real data in ``../shared/datasets`` (absent: their examples skip)."""


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A shrunk dataset per preset the examples use; the real ones only where ``../shared/datasets`` is."""
    out = tmp_path_factory.mktemp("example-data")
    roots = {"hateful_memes": make_synthetic(out / "hateful_memes", n=48, seed=0, image_size=32)}
    if SHARED_DATASETS.is_dir():
        _shrink_mvsa(SHARED_DATASETS / "mvsa_single", out / "mvsa_single")
        _shrink_multioff(SHARED_DATASETS / "multioff", out / "multioff")
        roots.update(mvsa_single=out / "mvsa_single", multioff=out / "multioff")
    return roots


def _two_towers(path: Path) -> str | None:
    """``clip`` / ``siglip`` for a config that builds both towers from one checkpoint (``model.encoder``), else
    ``None``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    name = ((data.get("model") or {}) if isinstance(data, dict) else {}).get("encoder")
    if name is None:
        return None
    return "siglip" if "siglip" in str(name).lower() else "clip"


def _overrides(root: Path, two_towers: str | None = None) -> list[str]:
    """What a quick run changes: the data, the encoders (tiny, random, without the example's encoder options; for
    a config of one two-tower checkpoint a tiny random CLIP / SigLIP of both towers), the base epochs and the
    loader's worker processes."""
    if two_towers is not None:
        encoders = [f"model.encoder={tiny_text_dir(two_towers)}"]
    else:
        encoders = [f"model.text_encoder.name={tiny_bert_dir()}", f"model.image_encoder.name={tiny_clip_vision_dir()}"]
    return [
        f"data.root={root}",
        *encoders,
        "model.text_encoder.options={}",
        "model.image_encoder.options={}",
        "train.epochs=1",
        "train.num_workers=0",
    ]


def _invoke(*args: Any) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"mmfuse {' '.join(map(str, args))}\nexit {result.exit_code}\n{result.output}"
    return result.output


def _root_for(path: Path, data_roots: dict[str, Path]) -> Path:
    preset = _preset(path)
    if preset in REAL_PRESETS and preset not in data_roots:
        pytest.skip(f"examples/{_id(path)} reads the real {preset} data, not found under ../shared/datasets")
    if preset not in data_roots:
        pytest.fail(f"examples/{_id(path)} reads preset {preset!r}: add a shrunk copy of that layout to data_roots")
    return data_roots[preset]


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=_id)
def test_example_runs(path: Path, data_roots: dict[str, Path], tmp_path: Path, one_torch_thread: None) -> None:
    kind = _kind(path)
    if kind == "script":
        _run_script(path, tmp_path)
        return
    root = _root_for(path, data_roots)
    overrides = _overrides(root, _two_towers(path))
    if kind == "config":
        _run_config(path, overrides, root, tmp_path)
        if _two_towers(path) is not None:  # a recipe that needs the internet: also exported and served, as issued
            _export_and_serve(tmp_path)
    else:
        _run_sweep(path, overrides, tmp_path)


def _run_config(path: Path, overrides: list[str], root: Path, tmp_path: Path) -> None:
    _invoke("train", path, *overrides, f"run.out_dir={tmp_path / 'runs'}", "--quiet")
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "completed" and summary["epochs_run"] == 1
    assert "accuracy" in _invoke("evaluate", run, "--split", "test")
    test_file = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["data"]["test"]
    _invoke("predict", run, root / test_file, "--out", tmp_path / "predictions.csv")
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == summary["test"]["n"]
    _invoke("report", run)
    assert (run / "report" / "report.html").is_file()


def _export_and_serve(tmp_path: Path) -> None:
    """The run exported to ONNX (checked against PyTorch by the export) and served from that file."""
    import base64

    pytest.importorskip("onnxruntime", reason="the export needs the serve extra")
    pytest.importorskip("fastapi", reason="the server needs the serve extra")
    from fastapi.testclient import TestClient

    from mmfuse.serve import create_app, load_predictor

    (run,) = (tmp_path / "runs").iterdir()
    onnx = tmp_path / "model.onnx"
    _invoke("export", run, "--out", onnx)
    payload = base64.b64encode(_png()).decode()
    with TestClient(create_app(load_predictor(onnx))) as client:
        answer = client.post("/predict", json={"text": "a meme", "image": payload})
        assert client.get("/info").json()["backend"] == "onnx"
    assert answer.status_code == 200, answer.text
    probabilities = answer.json()["probabilities"]
    values = probabilities.values() if isinstance(probabilities, dict) else probabilities
    assert sum(values) == pytest.approx(1.0)  # float32 probabilities summed


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _run_sweep(path: Path, overrides: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    budget = ["--n-trials", "2"] if "search" in yaml.safe_load(path.read_text(encoding="utf-8")) else []
    sets = [a for o in overrides for a in ("--set", o)]
    output = _invoke("sweep", path, "--out", folder, *budget, *sets)
    assert "sweep finished" in output
    table = pd.read_csv(folder / "trials.csv")
    assert table.columns.is_unique and (table["state"] == "complete").all()
    _invoke("ensemble", folder, "--top-k", "3", "--rounds", "5")
    _invoke("report", folder)
    assert (folder / "report" / "report.html").is_file()
    _invoke("report", folder / "ensemble")
    assert (folder / "ensemble" / "report" / "report.html").is_file()


def _run_script(path: Path, tmp_path: Path) -> None:
    """The script in a fresh interpreter (as ``python examples/python/x.py``) in an empty folder: it exits 0, and
    every check it makes (its asserts) holds."""
    import os
    import subprocess
    import sys

    if not SHARED_DATASETS.is_dir():  # the scripts read MVSA-Single from there
        pytest.skip(f"examples/{_id(path)} reads the real data, not found under ../shared/datasets")
    sets = " ".join(a for a in _overrides(Path(".")) if not a.startswith("data.root="))
    env = {**os.environ, "MMFUSE_EXAMPLE_ROWS": str(SCRIPT_ROWS), "MMFUSE_EXAMPLE_SET": f"{sets} run.quiet=true",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    assert done.returncode == 0, f"python examples/{_id(path)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


# ------------------------------------------------------------------------- what the quick runs replace, checked apart

YAML_FILES = [p for p in FILES if p.suffix in (".yaml", ".yml")]


@pytest.mark.parametrize("path", YAML_FILES, ids=_id)
def test_example_resolves_as_shipped(path: Path) -> None:
    """The example's own encoders (registered names and their options; a hub id is only known once fetched, so only
    its form is checked offline) and its head's parameters resolve, as ``mmfuse config show`` resolves them: the
    runs above swap the encoders for tiny ones and drop their options."""
    from mmfuse.config.describe import resolved_config
    from mmfuse.sweep import load_sweep

    if _kind(path) == "sweep":
        spec = load_sweep(path)  # its trials, search space and baselines are validated against the base here
        configs = [spec.base, *(sweep.base for sweep in spec.heads.values())]
    else:
        from mmfuse.config import load_config

        configs = [load_config(path)]
    for config in configs:
        resolved, _ = resolved_config(config)
        assert resolved["model"]["head"]["name"] == config.model.head.name


def _documented_commands(path: Path) -> list[list[str]]:
    """The ``mmfuse train`` / ``mmfuse sweep`` commands in ``path``'s comments (lines ending in ``\\`` joined;
    ``accelerate launch -m mmfuse ...`` too), each as its arguments after ``mmfuse``."""
    lines, joined = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            continue
        text = line[1:].strip()
        joined = f"{joined} {text}" if joined else text
        if joined.endswith("\\"):
            joined = joined[:-1]
            continue
        lines.append(joined)
        joined = ""
    commands = []
    for line in lines:
        if "mmfuse train " not in line and "mmfuse sweep " not in line:
            continue  # prose, whose apostrophes are no shell quotes
        words = shlex.split(line, comments=True)
        for start in range(len(words) - 1):
            if words[start] == "mmfuse" and words[start + 1] in ("train", "sweep"):
                commands.append(words[start + 1 :])
                break
    return commands


COMMANDS = [(path, command) for path in YAML_FILES for command in _documented_commands(path)]


def test_every_yaml_example_documents_how_to_run_it() -> None:
    """Each config and sweep says in its comments how to run it (what the test below checks)."""
    documented = {path for path, _ in COMMANDS}
    assert documented == set(YAML_FILES), sorted(_id(p) for p in set(YAML_FILES) - documented)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[f"{_id(p)}: {' '.join(c)}" for p, c in COMMANDS])
def test_a_command_in_an_example_gives_a_valid_config(path: Path, command: list[str]) -> None:
    """The command's options exist (the real CLI parses it), it names this example, and its config, overrides
    included, resolves: the variants a reader is told to try are valid too."""
    import typer.main

    from mmfuse.config.describe import resolved_config
    from mmfuse.sweep import load_sweep

    group = typer.main.get_command(app)
    name, *args = command
    with group.make_context("mmfuse", [name, *args], resilient_parsing=True) as parent:
        ctx = group.get_command(parent, name).make_context(name, args)  # an unknown option raises here
    params = ctx.params
    given = params["config"] if name == "train" else params["file"]
    assert (REPO / given).resolve() == path.resolve(), f"examples/{_id(path)} documents a command for {given}"
    if name == "train":
        from mmfuse.config import load_config

        config = load_config(path, [*(params["set_"] or []), *(params["overrides"] or [])])
        configs = [config]
    else:
        spec = load_sweep(path, params["overrides"] or ())
        configs = [spec.base, *(sweep.base for sweep in spec.heads.values())]
    for config in configs:
        resolved_config(config)
