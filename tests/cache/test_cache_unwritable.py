"""A feature cache folder on a read-only filesystem or a full disk: said once as a warning (on the console too when a
run trains), the features served from memory, nothing half written left behind (see tests/_unwritable.py for how the
places are made)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from _tiny import tiny_bert_dir, tiny_resnet_dir
from _unwritable import KINDS, REASONS, leftovers, unwritable
from mmfuse.cache import FeatureCache
from mmfuse.cache.shards import read_header
from mmfuse.cli import app
from mmfuse.data import Example
from mmfuse.encoders import Encoder


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mmfuse.cache" and r.levelno == logging.WARNING]


def stored(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.safetensors"))


@pytest.mark.parametrize("kind", KINDS)
def test_an_unwritable_cache_serves_from_memory_and_says_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, examples: list[Example],
    text_encoder: Encoder, image_encoder: Encoder, kind: str,
) -> None:  # fmt: skip
    examples = examples[:20]
    want = {  # the same batches (shards of 10) as below: the same float32 features, bit for bit
        e: FeatureCache(tmp_path / "writable", shard_examples=10, encode_workers=0).get(e, examples, need_sequence=True)
        for e in (text_encoder, image_encoder)
    }
    with unwritable(kind, tmp_path / "place", monkeypatch) as place:
        cache = FeatureCache(place, shard_examples=10, encode_workers=0)
        with caplog.at_level(logging.WARNING, logger="mmfuse.cache"):
            got = {e: cache.get(e, examples, need_sequence=True) for e in want}
        assert stored(place) == [] and leftovers(place) == []
    for encoder, table in want.items():  # the same stored float32 features, read back or kept in memory
        assert torch.equal(got[encoder].pooled, table.pooled) and torch.equal(got[encoder].values, table.values)
    (message,) = cache_warnings(caplog)  # once, for both encoders and all their shards
    assert str(place) in message and "cache.dir" in message
    assert REASONS[kind] in message if kind == "read-only" else "free on its disk" in message
    assert cache.stats.computed == cache.stats.unstored == 2 * len(examples)


def test_a_disk_that_fills_up_while_shards_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, examples: list[Example],
    image_encoder: Encoder,
) -> None:  # fmt: skip
    """Free space looked sufficient (another process fills the disk meanwhile): the write fails with ENOSPC inside
    safetensors, which used to crash the run; now it is said once, the partial shard is removed, the rest kept."""
    import mmfuse.cache.source as source

    writable = FeatureCache(tmp_path / "writable", shard_examples=10, encode_workers=0)
    want = writable.get(image_encoder, examples, need_sequence=True)  # the same batches as below
    monkeypatch.setattr(source, "free_bytes", lambda path: 1 << 40, raising=False)  # the estimate says: room
    with unwritable("full", tmp_path / "place", monkeypatch, free=8192) as place:
        cache = FeatureCache(place, shard_examples=10, encode_workers=0)
        with caplog.at_level(logging.WARNING, logger="mmfuse.cache"):
            got = cache.get(image_encoder, examples, need_sequence=True)
        assert leftovers(place) == []
        for shard in stored(place):  # what was written is whole (its header and size agree): a later run reads it
            read_header(shard)
        written = len(stored(place))
    assert torch.equal(got.pooled, want.pooled) and torch.equal(got.values, want.values)
    (message,) = cache_warnings(caplog)
    assert REASONS["full"] in message and str(place) in message and "cache.dir" in message
    assert cache.stats.unstored == len(examples) - 10 * written > 0


def _train(tmp_path: Path, synth_root: Path, name: str, **overrides: str):
    cfg = {
        "data": {"root": str(synth_root), "preset": "hateful_memes"},
        "model": {
            "text_encoder": str(tiny_bert_dir()),
            "image_encoder": str(tiny_resnet_dir()),
            "head": {"name": "concat", "params": {"hidden": 16}},
        },
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        "run": {"out_dir": str(tmp_path / "runs"), "name": name, "quiet": True},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return CliRunner().invoke(app, ["train", str(path), *(f"{k}={v}" for k, v in overrides.items())])


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_training_with_an_unwritable_cache_warns_on_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synth_root: Path, kind: str
) -> None:
    with unwritable(kind, tmp_path / "place", monkeypatch) as place:
        result = _train(tmp_path, synth_root, "run", **{"cache.dir": str(place)})
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        assert stored(place) == [] and leftovers(place) == []
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: the feature cache")]
    assert len(warnings) == 1, result.stderr  # once, on the console, not only in train.log
    assert str(place) in warnings[0] and "cache.dir" in warnings[0] and "in this process only" in warnings[0]
    assert "cannot be written" in (tmp_path / "runs" / "run" / "train.log").read_text()


@pytest.mark.slow
def test_damaged_shards_recomputed_are_said_on_the_console(tmp_path: Path, synth_root: Path) -> None:
    cache = tmp_path / "cache"
    assert _train(tmp_path, synth_root, "first", **{"cache.dir": str(cache)}).exit_code == 0
    victim = stored(cache)[0]
    with open(victim, "r+b") as f:  # truncated, as by a crash of an older writer or a bad disk
        f.truncate(victim.stat().st_size - 100)
    from mmfuse.cache import source

    source._SHARED.clear()  # a new process would not know the shard's header either
    result = _train(tmp_path, synth_root, "second", **{"cache.dir": str(cache)})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: feature cache shard")]
    assert len(lines) == 1 and victim.name in lines[0] and "recomputed" in lines[0], result.stderr
