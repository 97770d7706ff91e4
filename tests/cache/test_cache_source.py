"""FeatureCache: what it stores, what it reuses, and what it refuses (other encoders, damaged files).

Tests that compare the cache's tables with the encoder's own numbers store ``dtype="float32"``; the float16 default
and its rounding are tested in test_cache_storage.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from _tiny import tiny_image_encoder, tiny_text_encoder
from mmfuse.cache import FeatureCache, feature_source
from mmfuse.cache.shards import SUFFIX, read_header
from mmfuse.data import Example
from mmfuse.encoders import Encoder
from mmfuse.features import FeatureTable, compute_features, default_store


def assert_tables_close(got: FeatureTable, want: FeatureTable, *, atol: float = 1e-5) -> None:
    """Features of the same inputs, encoded in other batches (other padding, other GEMM shapes) than ``want``: float32
    rounding apart, <= 9.5e-7 measured on the tiny encoders with vector and with scalar kernels (10 % of ``atol``);
    a row of another input or encoder differs by far more than 1e-5."""
    assert len(got) == len(want)
    torch.testing.assert_close(got.pooled, want.pooled, atol=atol, rtol=0)
    assert (got.present is None) == (want.present is None)
    if want.present is not None:
        assert torch.equal(got.present, want.present)
    assert got.has_sequence == want.has_sequence and got.grid == want.grid
    if want.has_sequence:
        assert torch.equal(got.offsets, want.offsets)
        assert torch.equal(got.valid, want.valid)
        torch.testing.assert_close(got.values, want.values, atol=atol, rtol=0)


def shards(root: Path) -> list[Path]:
    return sorted(p for p in (root / "features").rglob(f"*{SUFFIX}") if not p.name.startswith("."))


@pytest.mark.parametrize("modality", ["text", "image"])
@pytest.mark.parametrize("need_sequence", [True, False])
@pytest.mark.numerics
def test_cold_and_warm_give_the_encoders_features(
    tmp_path: Path, examples: list[Example], text_encoder: Encoder, image_encoder: Encoder, modality: str,
    need_sequence: bool,
) -> None:  # fmt: skip
    encoder = text_encoder if modality == "text" else image_encoder
    want = compute_features(encoder, examples, need_sequence=need_sequence, batch_size=16)
    workers = 2 if modality == "image" and need_sequence else 0  # once through DataLoader workers, else quick
    # several shards: rows gathered
    cold = FeatureCache(tmp_path / "c", shard_examples=10, encode_workers=workers, dtype="float32")
    assert_tables_close(cold.get(encoder, examples, need_sequence=need_sequence, batch_size=16), want)
    assert 0 < cold.stats.computed <= len(examples)
    assert len(shards(tmp_path / "c")) >= 2

    warm = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")
    got = warm.get(encoder, examples, need_sequence=need_sequence)
    assert warm.stats.computed == 0 and warm.stats.loaded == cold.stats.computed
    assert_tables_close(got, want)
    backwards = warm.get(encoder, examples[::-1], need_sequence=need_sequence)
    assert_tables_close(backwards, compute_features(encoder, examples[::-1], need_sequence=need_sequence))
    assert warm.stats.computed == 0


@pytest.mark.numerics
def test_only_missing_inputs_are_encoded(tmp_path: Path, examples: list[Example], image_encoder: Encoder) -> None:
    cache = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")
    cache.get(image_encoder, examples[:20], need_sequence=True)
    assert cache.stats.computed == 20
    fresh = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")
    table = fresh.get(image_encoder, examples, need_sequence=True)
    assert (fresh.stats.loaded, fresh.stats.computed) == (20, len(examples) - 20)
    assert_tables_close(table, compute_features(image_encoder, examples, need_sequence=True))


def test_pooled_entries_cannot_serve_sequences_but_sequence_entries_serve_both(
    tmp_path: Path, examples: list[Example], text_encoder: Encoder
) -> None:
    lean = FeatureCache(tmp_path / "c", encode_workers=0)  # stores only what is asked (the default)
    lean.get(text_encoder, examples, need_sequence=False)
    seq = FeatureCache(tmp_path / "c", encode_workers=0)
    table = seq.get(text_encoder, examples, need_sequence=True)
    assert seq.stats.computed == len(examples) and table.has_sequence
    pooled = FeatureCache(tmp_path / "c", encode_workers=0)
    assert not pooled.get(text_encoder, examples, need_sequence=False).has_sequence
    assert pooled.stats.computed == 0


@pytest.mark.numerics
def test_images_are_keyed_by_their_bytes_not_their_path_or_mtime(
    tmp_path: Path, examples: list[Example], image_encoder: Encoder
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    subset = []
    for i, e in enumerate(examples[:6]):
        assert e.image is not None
        copy = folder / f"copy-{i}.png"
        shutil.copyfile(e.image, copy)
        subset.append(dataclasses.replace(e, image=copy))
    FeatureCache(tmp_path / "c", encode_workers=0).get(image_encoder, examples[:6], need_sequence=False)
    renamed = FeatureCache(tmp_path / "c", encode_workers=0)
    renamed.get(image_encoder, subset, need_sequence=False)
    assert renamed.stats.computed == 0  # same bytes under other names: reused

    # new content under the same name, size and modification time: recomputed
    target = subset[0].image
    st = target.stat()
    Image.new("RGB", (48, 48), (250, 10, 10)).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = FeatureCache(tmp_path / "c", encode_workers=0)
    table = edited.get(image_encoder, subset, need_sequence=False)
    assert edited.stats.computed == 1
    assert_tables_close(table, compute_features(image_encoder, subset, need_sequence=False))


@pytest.mark.numerics
def test_duplicate_and_missing_inputs_are_encoded_once(
    tmp_path: Path, examples: list[Example], image_encoder: Encoder
) -> None:
    rows = [examples[0], examples[1], examples[0], dataclasses.replace(examples[2], image=None),
            dataclasses.replace(examples[3], image=tmp_path / "no-such.png")]  # fmt: skip
    cache = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")
    done: list[int] = []
    table = cache.get(image_encoder, rows, need_sequence=True, progress=done.append)
    assert cache.stats.computed == 3 and sum(done) == len(rows)  # ex0, ex1, one blank for both absent images
    assert table.present.tolist() == [True, True, True, False, False]
    assert_tables_close(table, compute_features(image_encoder, rows, need_sequence=True))


def test_progress_adds_up_cold_warm_and_memo(tmp_path: Path, examples: list[Example], text_encoder: Encoder) -> None:
    cache = FeatureCache(tmp_path / "c", shard_examples=8, encode_workers=0)
    for source in (cache, FeatureCache(tmp_path / "c", encode_workers=0), cache):
        done: list[int] = []
        source.get(text_encoder, examples, need_sequence=True, batch_size=8, progress=done.append)
        assert sum(done) == len(examples)
    assert cache.stats.memo_hits == 1


def test_memo_answers_without_the_disk(tmp_path: Path, examples: list[Example], text_encoder: Encoder) -> None:
    cache = FeatureCache(tmp_path / "c", encode_workers=0)
    first = cache.get(text_encoder, examples, need_sequence=True)
    shutil.rmtree(tmp_path / "c")
    assert cache.get(text_encoder, examples, need_sequence=True) is first
    assert not cache.get(text_encoder, examples, need_sequence=False).has_sequence
    assert cache.stats.memo_hits == 2 and cache.stats.requests == 1


def test_other_preprocessing_gets_its_own_entries(tmp_path: Path, examples: list[Example]) -> None:
    long, short = tiny_text_encoder(), tiny_text_encoder(max_length=6)
    long.freeze()
    short.freeze()
    FeatureCache(tmp_path / "c", encode_workers=0).get(long, examples, need_sequence=True)
    cache = FeatureCache(tmp_path / "c", encode_workers=0)
    table = cache.get(short, examples, need_sequence=True)
    assert cache.stats.computed == len({e.text for e in examples})
    assert int((table.offsets[1:] - table.offsets[:-1]).max()) <= 6
    assert len(list((tmp_path / "c" / "features").iterdir())) == 2


@pytest.mark.numerics
def test_a_shard_of_another_encoder_is_never_used(
    tmp_path: Path, examples: list[Example], caplog: pytest.LogCaptureFixture
) -> None:
    clip, resnet = tiny_image_encoder("clip"), tiny_image_encoder("resnet")
    clip.freeze()
    resnet.freeze()
    FeatureCache(tmp_path / "c", encode_workers=0).get(clip, examples, need_sequence=False)
    FeatureCache(tmp_path / "c", encode_workers=0).get(resnet, examples[:1], need_sequence=False)
    (clip_shard,) = [p for p in shards(tmp_path / "c") if read_header(p).shapes["pooled"][1] == clip.dim]
    resnet_folder = next(p.parent for p in shards(tmp_path / "c") if p != clip_shard)
    planted = resnet_folder / ("99999999999999999999-" + clip_shard.name)  # newest name: read first
    shutil.copyfile(clip_shard, planted)
    cache = FeatureCache(tmp_path / "c", encode_workers=0)
    with caplog.at_level(logging.WARNING, logger="mmfuse.cache"):
        table = cache.get(resnet, examples, need_sequence=False)
    assert cache.stats.corrupt == 1 and "another encoder" in caplog.text
    assert table.pooled.shape[1] == resnet.dim
    assert_tables_close(table, compute_features(resnet, examples, need_sequence=False))
    assert not planted.exists() and planted.with_name(planted.name + ".corrupt").exists()


def _data_start(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)


def _flip_pooled(path: Path) -> None:
    start, header = _data_start(path)
    _flip(path, start + header["pooled"]["data_offsets"][0] + 5)


def _flip_values(path: Path) -> None:
    start, header = _data_start(path)
    _flip(path, start + header["values"]["data_offsets"][1] - 3)


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def _garbage_header(path: Path) -> None:
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\x00" * 64)


@pytest.mark.parametrize("damage", [_truncate, _flip_pooled, _flip_values, _garbage_header])
@pytest.mark.numerics
def test_damaged_shards_are_detected_and_recomputed(
    tmp_path: Path, examples: list[Example], image_encoder: Encoder, damage
) -> None:
    FeatureCache(tmp_path / "c", shard_examples=15, encode_workers=0, dtype="float32").get(
        image_encoder, examples, need_sequence=True
    )
    victim = shards(tmp_path / "c")[0]
    rows = read_header(victim).rows
    damage(victim)
    cache = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")
    table = cache.get(image_encoder, examples, need_sequence=True)
    assert cache.stats.corrupt == 1 and cache.stats.computed == rows
    assert_tables_close(table, compute_features(image_encoder, examples, need_sequence=True))
    assert victim.with_name(victim.name + ".corrupt").exists()
    again = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")  # the recomputed entries were written back
    again.get(image_encoder, examples, need_sequence=True)
    assert again.stats.computed == 0 and again.stats.corrupt == 0


@pytest.mark.numerics
def test_a_failed_write_leaves_no_file_and_still_returns_features(
    tmp_path: Path, examples: list[Example], text_encoder: Encoder, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    import safetensors.torch

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    cache = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")
    with caplog.at_level(logging.WARNING, logger="mmfuse.cache"):
        table = cache.get(text_encoder, examples, need_sequence=True)
    assert "No space left" in caplog.text
    assert_tables_close(table, compute_features(text_encoder, examples, need_sequence=True))
    leftovers = [p.name for p in (tmp_path / "c" / "features").rglob("*") if p.suffix == SUFFIX or "tmp" in p.name]
    assert leftovers == []


@pytest.mark.numerics
def test_trainable_encoders_are_never_cached(tmp_path: Path, examples: list[Example]) -> None:
    encoder = tiny_text_encoder()
    encoder.freeze(trainable_top_k=1)
    cache = FeatureCache(tmp_path / "c", encode_workers=0)
    table = cache.get(encoder, examples, need_sequence=False)
    assert cache.stats.uncached == 1 and not (tmp_path / "c").exists()
    assert_tables_close(table, compute_features(encoder, examples, need_sequence=False))


def test_feature_source_follows_the_configured_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "env"))
    env_source = feature_source()
    assert isinstance(env_source, FeatureCache) and env_source.root == tmp_path / "env"
    assert feature_source() is env_source  # one per folder and process: a sweep shares its memo
    assert feature_source(tmp_path / "cfg").root == tmp_path / "cfg"
    assert feature_source("off") is default_store()
    monkeypatch.setenv("MMFUSE_CACHE_DIR", "off")
    assert feature_source() is default_store()


def test_no_examples_is_an_error(tmp_path: Path, text_encoder: Encoder) -> None:
    with pytest.raises(ValueError, match="no examples"):
        FeatureCache(tmp_path / "c", encode_workers=0).get(text_encoder, [], need_sequence=False)


@pytest.mark.numerics
def test_a_pooled_request_stores_the_sequence_so_a_later_sequence_request_encodes_nothing(
    tmp_path: Path, examples: list[Example], image_encoder: Encoder
) -> None:
    """With ``store_sequences`` (``cache.store_sequences: true``); by default only what is asked is stored."""
    want = compute_features(image_encoder, examples, need_sequence=True, batch_size=16)
    cache = FeatureCache(tmp_path / "c", encode_workers=0, store_sequences=True, dtype="float32")
    pooled = cache.get(image_encoder, examples, need_sequence=False)
    assert not pooled.has_sequence and cache.stats.computed == len(examples)
    reader = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")
    later = reader.get(image_encoder, examples, need_sequence=True)
    assert reader.stats.computed == 0
    assert_tables_close(later, want)

    lean = FeatureCache(tmp_path / "lean", encode_workers=0, dtype="float32")  # the default: stores only what is asked
    lean.get(image_encoder, examples, need_sequence=False)
    again = FeatureCache(tmp_path / "lean", encode_workers=0, dtype="float32")
    again.get(image_encoder, examples, need_sequence=True)
    assert again.stats.computed == len(examples)  # pooled-only entries cannot serve a grid: encoded again


def _strip_grid(shard: Path) -> None:
    """Rewrites ``shard`` as one written before grids were stored: the same tensors, no ``grid`` metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(shard), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert meta.pop("grid") == "[2, 2]"
    save_file(tensors, str(shard), metadata=meta)


def test_the_image_grid_is_stored_with_the_features_and_old_entries_get_it_from_the_encoder(
    tmp_path: Path, examples: list[Example], image_encoder: Encoder
) -> None:
    """The tiny ResNet's 2×2 grid travels through the shards to each batch; shards written before the grid was stored
    (same cache key) are still read, with the grid taken from the encoder itself."""
    cold = FeatureCache(tmp_path / "c", shard_examples=15, encode_workers=0, dtype="float32")
    assert cold.get(image_encoder, examples, need_sequence=True).grid == (2, 2)
    assert {read_header(p).grid for p in shards(tmp_path / "c")} == {(2, 2)}
    warm = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")
    table = warm.get(image_encoder, examples, need_sequence=True)
    assert warm.stats.computed == 0 and table.grid == (2, 2) and table.batch([0, 3]).grid == (2, 2)

    for shard in shards(tmp_path / "c"):
        _strip_grid(shard)
    assert {read_header(p).grid for p in shards(tmp_path / "c")} == {None}
    old = FeatureCache(tmp_path / "c", encode_workers=0, dtype="float32")
    table = old.get(image_encoder, examples, need_sequence=True)
    assert old.stats.computed == 0 and old.stats.corrupt == 0  # read, not recomputed
    assert table.grid == (2, 2) and table.batch([1]).grid == (2, 2)
    assert_tables_close(table, compute_features(image_encoder, examples, need_sequence=True))
