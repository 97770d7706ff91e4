"""Two CPU processes (torch.distributed.run, gloo; what ``accelerate launch`` starts) give the results of one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _engine_support import make_config
from safetensors.torch import load_file

from mmfuse.engine.run_dir import RunDir
from mmfuse.engine.trainer import Trainer

LAUNCHER = Path(__file__).with_name("_launch_train.py")


@pytest.mark.numerics
def test_two_processes_equal_one(fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path) -> None:
    # No dropout: each process would draw its own masks for its half of a batch. Balanced class weights and a last
    # batch of 8 of 72 examples (padded by accelerate with repeats on the second process) check that the loss is the
    # weighted mean over the real examples of the whole batch. SGD, because what is invariant is each step's gradient
    # (the same sum, split across two processes): SGD moves the weights linearly in it, while AdamW's first steps
    # (about lr * g / |g|) can turn a rounding difference in a ~0 gradient into ~1e-5 (seen with grad_accum).
    sections = {
        "model": {"head": {"name": "concat", "params": {"dropout": 0.0, "hidden": 16}}},
        "train": {"epochs": 2, "batch_size": 16, "eval_batch_size": 16, "class_weights": "balanced"},
        "optim": {"name": "sgd", "lr": 0.1},
    }
    two = make_config(synthetic_root, tmp_path, run={"name": "two"}, **sections)
    config = tmp_path / "two.yaml"
    config.write_text(two.to_yaml(), encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [*command, str(LAUNCHER), str(config)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (tmp_path / "two" / "train.log").read_text()
    assert re.search(r"device cpu\S* x2", log)
    # no persistent cache here (the launcher's Trainer uses the in-process memo): the log says each process encoded all
    assert "each of the 2 processes encodes every input (the feature cache is off)" in log

    one = make_config(synthetic_root, tmp_path, run={"name": "one"}, **sections)
    Trainer(one, synthetic_splits["train"].examples, synthetic_splits["val"].examples).fit()

    history_one, history_two = RunDir(tmp_path / "one").history(), RunDir(tmp_path / "two").history()
    assert len(history_one) == len(history_two) == 2
    # Losses (~0.7) are float32 means over the same examples summed in another order: <= 6e-8 apart (measured, with
    # and without vector kernels); 1e-5 relative is 100x that, while a loss not scaled by the process count is off
    # by ~3e-3 already in epoch 1 (checked).
    for a, b in zip(history_one, history_two, strict=True):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val"]["n"] == b["val"]["n"] == len(synthetic_splits["val"].examples)  # no repeats counted
        assert a["val"] == pytest.approx(b["val"], rel=1e-5, abs=1e-7)
    w1 = load_file(str(tmp_path / "one" / "checkpoints" / "last" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "checkpoints" / "last" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for key in w1:
        # SGD: the weights differ by lr times the gradients' rounding differences, summed over the steps: <= 6e-8
        # measured (one float32 ulp of a weight near 0.5), with and without vector kernels; 1e-6 is a 15x margin
        torch.testing.assert_close(w1[key], w2[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_accelerate_launch_splits_feature_extraction_over_the_processes(synthetic_root: Path, tmp_path: Path) -> None:
    """``accelerate launch --num_processes 2 -m mmfuse train``: each input is encoded by one process into the shared
    cache folder, the run trains from the complete cache, and one process later finds every feature there."""
    import socket

    from _tiny import tiny_bert_dir, tiny_resnet_dir
    from mmfuse.cache import FeatureCache
    from mmfuse.cache.keys import ContentHasher
    from mmfuse.cache.shards import read_header
    from mmfuse.data import DataConfig, load_splits
    from mmfuse.engine.classifier import MultimodalClassifier

    cache = tmp_path / "cache"
    cfg = make_config(
        synthetic_root, tmp_path, run={"name": "two", "quiet": True},
        model={"text_encoder": {"name": str(tiny_bert_dir())}, "image_encoder": {"name": str(tiny_resnet_dir())},
               "head": "concat"},
        cache={"enabled": True, "dir": str(cache)}, train={"epochs": 1, "batch_size": 16, "eval_batch_size": 16},
    )  # fmt: skip
    config = tmp_path / "two.yaml"
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # --multi_gpu picks accelerate's multi-process launcher (torchrun) also on a machine without GPUs, where each
    # process runs on the CPU with gloo; --cpu would pick its one-process launcher
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", port]  # fmt: skip
    done = subprocess.run(
        [*launch, "-m", "mmfuse", "train", str(config)], env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (tmp_path / "two" / "train.log").read_text()
    assert re.search(r"device cpu\S* x2", log)
    splits = load_splits(DataConfig(root=synthetic_root, preset="hateful_memes"))
    hasher = ContentHasher()

    def inputs(*names: str) -> int:  # the distinct inputs of these splits, per modality (no split shares one here)
        return sum(len(set(hasher.keys(splits[n].examples, modality=m))) for n in names for m in ("text", "image"))

    found = re.search(r"features: 2 processes encoded (\d+) \+ (\d+) = (\d+) inputs into the shared feature cache", log)
    assert found, log[-3000:]
    shares = [int(found[1]), int(found[2])]
    assert min(shares) > 0 and sum(shares) == int(found[3]) == inputs("train", "val")
    headers = [read_header(p) for p in cache.rglob("*.safetensors") if not p.name.startswith(".")]
    keys = [k for h in headers for k in h.keys]
    # each input stored once (no process encoded another's); the test split is evaluated by the main process alone
    assert len(keys) == len(set(keys)) == inputs("train", "val", "test")
    assert len({h.path.name.split("-")[1] for h in headers}) == 2  # shards of both processes (pid in the name)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["status"] == "completed"

    # one process afterwards: every feature is in the cache
    source = FeatureCache(cache, encode_workers=0)
    one = make_config(synthetic_root, tmp_path, run={"name": "one"}, model=cfg.model.model_dump(),
                      cache={"enabled": True, "dir": str(cache)}, train={"epochs": 1})  # fmt: skip
    MultimodalClassifier(one, source=source).fit(splits["train"], splits["val"])
    assert source.stats.computed == 0 and source.stats.loaded == inputs("train", "val")
