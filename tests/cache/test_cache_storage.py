"""How the feature cache stores entries: float16 sequences/grids (``cache.dtype``), float32 and float16 entries kept
apart, sequences stored only when a head reads them (``cache.store_sequences``), and their size per example."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from _tiny import tiny_bert_dir, tiny_resnet_dir
from mmfuse.cache import CacheStorage, FeatureCache, feature_source, list_cache, source_for
from mmfuse.cache.shards import SUFFIX, CorruptShardError, crc32, read_header
from mmfuse.config import ConfigError, config_from, load_config
from mmfuse.data import Example
from mmfuse.encoders import Encoder
from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.features import compute_features


def shards(root: Path) -> list[Path]:
    return sorted(p for p in (root / "features").rglob(f"*{SUFFIX}") if not p.name.startswith("."))


def as_float16(values: torch.Tensor) -> torch.Tensor:
    return values.half().float()


@pytest.mark.numerics
@pytest.mark.parametrize("modality", ["text", "image"])
def test_float16_sequences_round_trip_as_float32(
    tmp_path: Path, examples: list[Example], text_encoder: Encoder, image_encoder: Encoder, modality: str
) -> None:
    encoder = text_encoder if modality == "text" else image_encoder
    want = compute_features(encoder, examples, need_sequence=True, batch_size=16)
    cold = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float16")
    got = cold.get(encoder, examples, need_sequence=True, batch_size=16)
    assert got.values.dtype == torch.float32 and got.pooled.dtype == torch.float32  # read back as float32
    # on disk: float16 sequences, float32 pooled vectors (pooled_dtype's default)
    assert {(read_header(p).dtypes["values"], read_header(p).dtypes["pooled"]) for p in shards(tmp_path / "c")} == {
        ("F16", "F32")
    }
    # the same batches as ``want``: the stored values are exactly ``want`` rounded to float16, the pooled vectors
    # exactly ``want``'s
    assert torch.equal(got.values, as_float16(want.values))
    assert torch.equal(got.pooled, want.pooled)
    assert torch.equal(got.offsets, want.offsets) and torch.equal(got.valid, want.valid) and got.grid == want.grid
    # float16 keeps 11 significant bits: a relative error <= 2**-11 where it holds the value as a normal number
    normal = want.values.abs() >= 2.0**-14
    rel = (got.values - want.values).abs()[normal] / want.values.abs()[normal]
    assert float(rel.max()) <= 2.0**-11 and float(rel.max()) > 0  # rounded, and not more than float16 must

    warm = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float16")
    again = warm.get(encoder, examples[::-1], need_sequence=True)
    assert warm.stats.computed == 0
    # cold and warm runs train on the same numbers: the cold table is what the warm one reads back
    back = warm.get(encoder, examples, need_sequence=True)
    assert torch.equal(back.values, got.values) and torch.equal(back.pooled, got.pooled)
    assert torch.equal(again.pooled, got.pooled.flip(0))


def test_pooled_float16_is_stored_and_read_back_when_asked(
    tmp_path: Path, examples: list[Example], image_encoder: Encoder
) -> None:
    want = compute_features(image_encoder, examples, need_sequence=False, batch_size=16)
    got = FeatureCache(tmp_path / "c", encode_workers=0, pooled_dtype="float16").get(
        image_encoder, examples, need_sequence=False, batch_size=16
    )
    assert {read_header(p).dtypes["pooled"] for p in shards(tmp_path / "c")} == {"F16"}
    assert got.pooled.dtype == torch.float32 and torch.equal(got.pooled, as_float16(want.pooled))


def test_float32_and_float16_entries_never_mix(tmp_path: Path, examples: list[Example], image_encoder: Encoder) -> None:
    """The storage dtype is part of an entry's key: a float16 request does not read float32 shards (written before
    float16 existed, or by a float32 run) and the reverse, on disk and in the process's memo."""
    root = tmp_path / "c"
    fp32 = FeatureCache(root, encode_workers=0, dtype="float32").get(image_encoder, examples, need_sequence=True)
    assert not torch.equal(fp32.values, as_float16(fp32.values))  # float32 values float16 cannot hold

    half = FeatureCache(root, encode_workers=0, dtype="float16")
    fp16 = half.get(image_encoder, examples, need_sequence=True)
    assert half.stats.computed == len(examples) and half.stats.loaded == 0  # float32 shards not read: encoded
    assert torch.equal(fp16.values, as_float16(fp32.values))

    full = FeatureCache(root, encode_workers=0, dtype="float32")
    assert torch.equal(full.get(image_encoder, examples, need_sequence=True).values, fp32.values)
    assert full.stats.computed == 0 and full.stats.corrupt == 0  # the float32 entries, unchanged

    # one cache per folder in a process, its memo shared: the float16 view does not get the float32 table
    shared32 = feature_source(root, CacheStorage(dtype="float32"))
    shared16 = feature_source(root)  # float16: the default
    assert torch.equal(shared32.get(image_encoder, examples, need_sequence=True).values, fp32.values)
    assert torch.equal(shared16.get(image_encoder, examples, need_sequence=True).values, fp16.values)
    assert shared16.stats is shared32.stats and shared32.stats.memo_hits == 0 and shared32.stats.computed == 0

    # pooled vectors are float32 in both: a pooled request reads either; a float16 pooled request reads neither
    pooled16 = FeatureCache(root, encode_workers=0, pooled_dtype="float16")
    pooled16.get(image_encoder, examples, need_sequence=False)
    assert pooled16.stats.computed == len(examples)


def test_a_shard_of_another_dtype_is_set_aside_not_reinterpreted(
    tmp_path: Path, examples: list[Example], text_encoder: Encoder
) -> None:
    root = tmp_path / "c"
    want = FeatureCache(root, encode_workers=0).get(text_encoder, examples, need_sequence=True)
    (shard,) = shards(root)
    with safe_open(str(shard), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    tensors["values"] = tensors["values"].double()  # checksums recomputed: only the dtype is wrong
    meta["crc32"] = json.dumps({k: crc32(t) for k, t in tensors.items()}, sort_keys=True)
    save_file(tensors, str(shard), metadata=meta)
    with pytest.raises(CorruptShardError, match="'values' has dtype F64"):
        read_header(shard)
    again = FeatureCache(root, encode_workers=0)
    table = again.get(text_encoder, examples, need_sequence=True)
    assert again.stats.corrupt == 1 and again.stats.computed == len(examples)
    torch.testing.assert_close(table.values, want.values, rtol=0, atol=0)  # the same batches: the same numbers


def test_grids_are_stored_only_when_a_head_reads_them(
    tmp_path: Path, examples: list[Example], image_encoder: Encoder
) -> None:
    """By default a pooled request (``concat``) stores pooled vectors only; a later grid request (``cross_attention``)
    finds no grid, encodes those inputs again and stores them with their grids; it never answers without one."""
    root = tmp_path / "c"
    pooled = FeatureCache(root, encode_workers=0, dtype="float32")
    pooled.get(image_encoder, examples, need_sequence=False)
    assert [read_header(p).sequence for p in shards(root)] == [False]

    grid = FeatureCache(root, encode_workers=0, dtype="float32")
    table = grid.get(image_encoder, examples, need_sequence=True)
    assert grid.stats.computed == len(examples) and grid.stats.loaded == 0
    want = compute_features(image_encoder, examples, need_sequence=True)
    # other batch compositions than ``want``'s: float32 rounding apart (<= 1e-6 measured), far below 1e-5
    torch.testing.assert_close(table.values, want.values, rtol=0, atol=1e-5)
    assert table.grid == want.grid and torch.equal(table.offsets, want.offsets)
    assert sorted(read_header(p).sequence for p in shards(root)) == [False, True]

    later = FeatureCache(root, encode_workers=0, dtype="float32")  # both requests are now answered from disk
    later.get(image_encoder, examples, need_sequence=True)
    later.get(image_encoder, examples, need_sequence=False)
    assert later.stats.computed == 0


def test_store_sequences_names_the_modalities_whose_sequences_are_kept(
    tmp_path: Path, examples: list[Example], text_encoder: Encoder, image_encoder: Encoder
) -> None:
    root = tmp_path / "c"
    cache = FeatureCache(root, encode_workers=0, store_sequences=["image"])
    cache.get(text_encoder, examples, need_sequence=False)
    cache.get(image_encoder, examples, need_sequence=False)
    stored = {read_header(p).modality: read_header(p).sequence for p in shards(root)}
    assert stored == {"text": False, "image": True}
    later = FeatureCache(root, encode_workers=0)
    later.get(image_encoder, examples, need_sequence=True)
    assert later.stats.computed == 0
    with pytest.raises(ValueError, match="unknown modalities"):
        FeatureCache(root, store_sequences=["audio"])
    with pytest.raises(ValueError, match="'bfloat16'"):
        FeatureCache(root, dtype="bfloat16")


def test_cache_config_sets_how_runs_store_entries(tmp_path: Path) -> None:
    config = load_config(None, ["cache.dtype=float16", "cache.store_sequences=[image]", f"cache.dir={tmp_path}"])
    source = source_for(config.cache.enabled, config.cache.dir, **config.cache.storage_options())
    assert isinstance(source, FeatureCache)
    assert source.storage == CacheStorage(dtype="float16", pooled_dtype="float32", store_sequences=frozenset({"image"}))
    assert load_config(None, []).cache.dtype == "float16"  # the default (see the test of the defaults below)
    with pytest.raises(ConfigError, match="dtype") as err:
        load_config(None, ["cache.dtype=bfloat16"])
    assert "float16" in str(err.value)


def test_list_cache_gives_bytes_per_example(tmp_path: Path, examples: list[Example], image_encoder: Encoder) -> None:
    root = tmp_path / "c"
    FeatureCache(root, encode_workers=0, shard_examples=16, dtype="float32").get(
        image_encoder, examples, need_sequence=True
    )
    FeatureCache(root, encode_workers=0).get(image_encoder, examples[:5], need_sequence=True)  # float16
    (image,) = list_cache(root)
    files = shards(root)
    assert image.shard_bytes == sum(p.stat().st_size for p in files)
    assert image.bytes_per_example == image.shard_bytes / len(examples)
    assert image.dtypes == {"pooled float32": len(examples), "sequence float16": 5, "sequence float32": len(examples)}


def test_cache_ls_shows_bytes_per_example_and_storage_dtypes(
    tmp_path: Path, examples: list[Example], image_encoder: Encoder
) -> None:
    from typer.testing import CliRunner

    from mmfuse.cli import app

    root = tmp_path / "c"
    FeatureCache(root, encode_workers=0, dtype="float16").get(image_encoder, examples, need_sequence=True)
    runner = CliRunner()
    listing = runner.invoke(app, ["cache", "ls", "--cache-dir", str(root), "--json"])
    assert listing.exit_code == 0, listing.output
    (image,) = json.loads(listing.output)["encoders"]
    per_example = sum(p.stat().st_size for p in shards(root)) / len(examples)
    assert image["bytes_per_example"] == per_example
    assert image["dtypes"] == {"pooled float32": len(examples), "sequence float16": len(examples)}

    plain = runner.invoke(app, ["cache", "ls", "--cache-dir", str(root)])
    assert plain.exit_code == 0, plain.output
    shown = f"{round(per_example) / 1024:.1f} KiB" if per_example >= 1024 else f"{round(per_example)} B"
    assert f"{shown} per example" in plain.output
    assert f"stored as: pooled float32 ({len(examples)} inputs), sequence float16 ({len(examples)} inputs)" in (
        plain.output
    )


def _fit_cross_attention(
    tmp_path: Path, splits: dict, dtype: str | None, name: str
) -> tuple[Any, np.ndarray, np.ndarray]:
    """cross_attention (reads the text sequence and the image grid) trained from the cache at ``tmp_path / "cache"``
    with ``cache.dtype`` (``None``: the config's default), in a fresh process's state (no memo)."""
    from mmfuse.cache import source

    source._SHARED.clear()
    cfg = config_from(
        head="cross_attention",
        text_encoder=str(tiny_bert_dir()),
        image_encoder=str(tiny_resnet_dir()),
        epochs=2,
        batch_size=8,
        **{"model.head.params": {"dim": 32, "num_heads": 2, "hidden": 32}, "cache.dir": str(tmp_path / "cache")},
        **({} if dtype is None else {"cache.dtype": dtype}),
        **{"train.device": "cpu", "train.seed": 0, "run.out_dir": str(tmp_path / "runs")},
        **{"run.name": name, "run.quiet": True},
    )
    clf = MultimodalClassifier(cfg).fit(splits["train"], splits["val"])
    losses = np.array([[r["train_loss"], r["val"]["loss"]] for r in clf.history])
    return clf.source, losses, clf.predict_proba(splits["test"])


@pytest.mark.numerics
def test_training_from_float16_features_is_repeatable_and_close_to_float32(tmp_path: Path, synth_splits: dict) -> None:
    fp32_source, fp32_losses, fp32_proba = _fit_cross_attention(tmp_path, synth_splits, "float32", "fp32")
    cold_source, cold_losses, cold_proba = _fit_cross_attention(tmp_path, synth_splits, "float16", "cold")
    warm_source, warm_losses, warm_proba = _fit_cross_attention(tmp_path, synth_splits, "float16", "warm")
    assert fp32_source.stats.computed > 0 and cold_source.stats.computed > 0  # float16 did not read float32 entries
    assert warm_source.stats.computed == 0 and warm_source.stats.loaded > 0
    assert warm_source.storage.dtype == "float16"
    # a cold float16 run trains on the numbers a warm one reads back: identical training
    np.testing.assert_array_equal(cold_losses, warm_losses)
    np.testing.assert_array_equal(cold_proba, warm_proba)
    # float16 moves each sequence value by <= 2**-11 (4.9e-4) relative; two epochs of AdamW on the tiny encoders carry
    # that into losses <= 3.2e-7 and probabilities <= 8.1e-7 apart (measured with vector and with scalar kernels,
    # ATEN_CPU_CAPABILITY=default). 1e-5 is 12x that, and far below what features of another input or encoder move
    assert not np.array_equal(cold_proba, fp32_proba)  # the float16 features were used
    np.testing.assert_allclose(cold_losses, fp32_losses, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cold_proba, fp32_proba, rtol=0, atol=1e-5)


def test_float16_is_the_default_of_the_config_and_of_every_library_entry_point(tmp_path: Path) -> None:
    """``cache.dtype``'s default (the config) and the library's (``FeatureCache``, ``CacheStorage``,
    ``feature_source``, ``source_for``: what a user passing ``source=`` gets) are one: float16 grids and sequences,
    float32 pooled vectors."""
    import inspect

    from mmfuse.cache.source import DEFAULT_DTYPE
    from mmfuse.config.schema import CacheConfig

    assert DEFAULT_DTYPE == "float16"
    assert (CacheConfig().dtype, CacheConfig().pooled_dtype) == (DEFAULT_DTYPE, "float32")
    assert load_config(None, []).cache.storage_options()["dtype"] == DEFAULT_DTYPE
    assert CacheStorage() == CacheStorage(dtype=DEFAULT_DTYPE, pooled_dtype="float32", store_sequences=False)
    assert FeatureCache(tmp_path / "a").storage == CacheStorage()
    assert feature_source(tmp_path / "b").storage == CacheStorage()
    assert source_for(True, str(tmp_path / "c")).storage == CacheStorage()
    assert inspect.signature(source_for).parameters["dtype"].default == DEFAULT_DTYPE
    # float32 stays one setting away
    assert FeatureCache(tmp_path / "d", dtype="float32").storage.dtype == "float32"
    assert load_config(None, ["cache.dtype=float32"]).cache.storage_options()["dtype"] == "float32"


def distinct(examples: list[Example]) -> int:
    """Distinct images among ``examples`` (the cache keys an image by its bytes)."""
    return len({e.image.read_bytes() for e in examples})


def _cache_ls(root: Path) -> dict:
    from typer.testing import CliRunner

    from mmfuse.cli import app

    listing = CliRunner().invoke(app, ["cache", "ls", "--cache-dir", str(root), "--json"])
    assert listing.exit_code == 0, listing.output
    return {e["modality"]: e for e in json.loads(listing.output)["encoders"]}


def test_a_default_run_stores_float16_grids_and_says_why_it_encodes_float32_entries_again(
    tmp_path: Path, synth_splits: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through MultimodalClassifier and `mmfuse cache ls`: a run with the default config stores its sequences and
    grids as float16 (half the bytes of a float32 run's); a cache filled while float32 was the default (a
    ``cache.dtype: float32`` run here) is not read by it, and the run says so on its console and in its log, with
    the count and the setting that reuses them; `cache ls` counts the dataset once."""
    fp32_root, root = tmp_path / "fp32" / "cache", tmp_path / "cache"
    _fit_cross_attention(tmp_path / "fp32", synth_splits, "float32", "fp32")
    fp32 = _cache_ls(fp32_root)
    inputs = {m: fp32[m]["dtypes"]["sequence float32"] for m in ("text", "image")}  # distinct ones of the 60 examples
    assert min(inputs.values()) > 50
    for modality, n in inputs.items():
        assert fp32[modality]["dtypes"] == {"pooled float32": n, "sequence float32": n}

    _fit_cross_attention(tmp_path, synth_splits, None, "default")  # default config, an empty cache
    half = _cache_ls(root)
    for modality, n in inputs.items():
        assert half[modality]["dtypes"] == {"pooled float32": n, "sequence float16": n}
    assert {read_header(p).dtypes["values"] for p in shards(root)} == {"F16"}
    # the same entries, their sequences in 2 bytes a value instead of 4: the bytes per example are what the float32
    # run's are, less 2 bytes for each stored sequence value (checksums and keys in the headers differ by a few
    # bytes per shard: 16 bytes per example allows for them)
    for modality in ("text", "image"):
        values = sum(read_header(p).shapes["values"][0] * read_header(p).shapes["values"][1] for p in shards(root)
                     if read_header(p).modality == modality)  # fmt: skip
        saved = fp32[modality]["bytes_per_example"] - half[modality]["bytes_per_example"]
        assert abs(saved - 2 * values / inputs[modality]) <= 16, (modality, saved, values)

    # a user upgrading: a float32 cache, then a run with the new default on it
    shutil.copytree(fp32_root, tmp_path / "old" / "cache")
    capsys.readouterr()
    source, _, _ = _fit_cross_attention(tmp_path / "old", synth_splits, None, "upgraded")
    assert source.stats.computed == source.stats.other_dtype == sum(inputs.values())  # each encoded again
    console = capsys.readouterr().err
    said = [line for line in console.splitlines() if "in other dtypes" in line]
    assert len(said) == 2, console  # once per encoder folder: the text's and the image's
    for line in said:
        assert line.startswith("warning: feature cache ") and "of the" in line
        assert "pooled vectors float32 and sequences float32" in line and "Set cache.dtype: float32 to reuse" in line
    log = (tmp_path / "old" / "runs" / "upgraded" / "train.log").read_text(encoding="utf-8")
    assert log.count("in other dtypes") >= 2  # the warnings, and the later splits' lines (info)
    upgraded = _cache_ls(tmp_path / "old" / "cache")
    n = inputs["image"]
    assert upgraded["image"]["dtypes"] == {"pooled float32": n, "sequence float32": n, "sequence float16": n}
    # one usage record per split request whatever the dtypes: the dataset is not counted twice
    assert [d["requests"] for d in upgraded["image"]["datasets"]] == [d["requests"] for d in fp32["image"]["datasets"]]

    # asked for, float32 reads them again: nothing encoded, nothing said
    capsys.readouterr()
    again, _, _ = _fit_cross_attention(tmp_path / "old", synth_splits, "float32", "asked")
    assert again.stats.computed == 0 and again.stats.other_dtype == 0
    assert "in other dtypes" not in capsys.readouterr().err


def test_other_dtypes_are_counted_from_the_shard_headers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, examples: list[Example], image_encoder: Encoder
) -> None:
    """The notice counts only the inputs to encode that the folder holds in other dtypes; a warning the first time
    per folder, then lines in the log; pooled requests read float32 pooled vectors under either cache.dtype."""
    import logging

    root = tmp_path / "c"
    FeatureCache(root, encode_workers=0, dtype="float32").get(image_encoder, examples[:30], need_sequence=True)
    cache = FeatureCache(root, encode_workers=0)
    with caplog.at_level(logging.INFO, logger="mmfuse.cache"):
        cache.get(image_encoder, examples[:10], need_sequence=True)
        cache.get(image_encoder, examples[20:], need_sequence=True)  # 10 held as float32, 12 never encoded
        cache.get(image_encoder, examples, need_sequence=False)  # pooled float32: read, whatever the grid's dtype
        cache.get(image_encoder, examples[:10], need_sequence=True)  # its own float16 entries now: nothing to say
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "in other dtypes" in r.getMessage()]
    assert [level for level, _ in said] == [logging.WARNING, logging.INFO]
    # (held in other dtypes, to encode) of each message: the distinct inputs (the synthetic set repeats a few images)
    counts = [tuple(map(int, re.search(r": (\d+) of the (\d+) image inputs to encode", m).groups())) for _, m in said]
    first, rest = (distinct(examples[:10]), distinct(examples[20:]))
    assert counts == [(first, first), (distinct(examples[20:30]), rest)] and rest > distinct(examples[20:30])
    assert f"({first} with pooled vectors float32 and sequences float32)" in said[0][1]
    assert "Set cache.dtype: float32 to reuse them" in said[0][1] and "default now" in said[0][1]
    assert cache.stats.other_dtype == sum(n for n, _ in counts) and cache.stats.computed == first + rest

    # the other way round: a float32 run on float16 entries, and pooled vectors asked for as float16
    caplog.clear()
    back = FeatureCache(root, encode_workers=0, dtype="float32")
    with caplog.at_level(logging.INFO, logger="mmfuse.cache"):
        back.get(image_encoder, examples[30:], need_sequence=True)
        FeatureCache(root, encode_workers=0, pooled_dtype="float16").get(
            image_encoder, examples[:5], need_sequence=False
        )
    messages = [r.getMessage() for r in caplog.records if "in other dtypes" in r.getMessage()]
    assert len(messages) == 2
    n = distinct(examples[30:])
    assert f"{n} of the {n} image inputs" in messages[0] and "Set cache.dtype: float16 to reuse" in messages[0]
    assert "default now" not in messages[0]
    n = distinct(examples[:5])
    assert f"{n} of the {n} image inputs" in messages[1] and "Set cache.pooled_dtype: float32 to reuse" in messages[1]


def test_the_free_space_check_counts_float16_sequences_at_two_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, examples: list[Example],
    image_encoder: Encoder,
) -> None:  # fmt: skip
    """A disk with room for the float16 entries (not for float32 ones) takes them: the check before the first shard
    weighs each stored value at its own size."""
    import logging

    import mmfuse.cache.source as source

    sized = FeatureCache(tmp_path / "sized", encode_workers=0, dtype="float32")
    sized.get(image_encoder, examples, need_sequence=True)
    fp32_bytes = sum(p.stat().st_size for p in shards(tmp_path / "sized"))
    monkeypatch.setattr(source, "free_bytes", lambda path: int(fp32_bytes * 0.75), raising=False)
    cache = FeatureCache(tmp_path / "c", encode_workers=0)  # float16 grids: ~half the bytes
    with caplog.at_level(logging.WARNING, logger="mmfuse.cache"):
        cache.get(image_encoder, examples, need_sequence=True)
    assert cache.stats.unstored == 0 and not [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert sum(p.stat().st_size for p in shards(tmp_path / "c")) < fp32_bytes * 0.75
    # the same free space refuses float32 entries: the check still says it
    refused = FeatureCache(tmp_path / "r", encode_workers=0, dtype="float32")
    refused.get(image_encoder, examples, need_sequence=True)
    assert refused.stats.unstored == len(examples)
