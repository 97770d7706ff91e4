"""How a cold feature cache runs a frozen image encoder: what crosses from the DataLoader workers, and how often
the backend is chosen and checked.

Pixel comparisons are exact (``torch.equal``): the uint8 transport changes where ``(x - 127) / 128`` is computed,
not what (every uint8 minus 127 is a float32 integer, and dividing by 128 is exact), and the encoder then gets the
same float32 batches, so the same features, on any CPU.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mmfuse.features.compute as compute
from _tiny import real_image_encoder
from mmfuse.cache import FeatureCache
from mmfuse.cache.keys import ContentHasher
from mmfuse.cache.location import onnx_dir
from mmfuse.cache.peers import Peers
from mmfuse.cache.shards import is_shard_file, read_header
from mmfuse.data import Example
from mmfuse.data.images import open_image
from mmfuse.encoders import EncoderOutput, ImageEncoder
from mmfuse.encoders._preprocess import LitePreprocessor
from mmfuse.features import compute_features


class _LiteConv(ImageEncoder):
    """A tiny frozen convolution behind EfficientNet-Lite's preprocessing (32 px), with a grid."""

    name = "lite-conv"
    dim = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self._pre = LitePreprocessor(image_size=32)
        self.requires_grad_(False)
        self.forwards = 0

    @property
    def preprocess(self) -> LitePreprocessor:  # type: ignore[override]
        return self._pre

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        self.forwards += 1
        grid = self.conv(pixel_values)
        return EncoderOutput(pooled=grid.mean(dim=(2, 3)), sequence=grid.flatten(2).transpose(1, 2), grid=(8, 8))

    def cache_identity(self) -> dict[str, Any]:
        return {"encoder": "lite-conv", "weights": self.conv.weight.sum().item(), "pre": self._pre.identity()}


def _float32_pixels(example: Example, size: int) -> torch.Tensor:
    """EfficientNet-Lite's float32 preprocessing as mmfuse computed it in the DataLoader workers before the uint8
    transport: RGB, bilinear stretch, ``(x - 127) / 128`` in numpy; zeros for a missing or unreadable image."""
    try:
        image = open_image(example.image) if example.image is not None else None
    except ValueError:
        image = None
    if image is None:
        return torch.zeros(3, size, size)
    image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    x = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


@pytest.fixture
def mixed(examples: list[Example], tmp_path: Path) -> list[Example]:
    """Ten examples with images, one without, one whose image file does not decode."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    some = list(examples[:10])
    return [*some[:4], replace(some[4], image=None), *some[5:8], replace(some[8], image=broken), some[9]]


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_send_uint8_pixels_and_the_features_are_bit_identical(
    workers: int, mixed: list[Example], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EfficientNet-Lite preprocessing: batches leave the DataLoader as uint8 (a quarter of the float32 bytes
    through shared memory), and the features equal the encoder's on the float32 pixels, blanks included."""
    seen: list[torch.dtype] = []
    collate = compute.collate_examples

    def spy(items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(items)
        seen.append(batch["pixel_values"].dtype)
        return batch

    monkeypatch.setattr(compute, "collate_examples", spy)
    encoder = _LiteConv()
    table = compute_features(encoder, mixed, need_sequence=True, batch_size=4, num_workers=workers, backend="torch")
    if workers == 0:  # the spy runs in this process only without workers
        assert seen == [torch.uint8] * 3
    pixels = torch.stack([_float32_pixels(e, 32) for e in mixed])
    with torch.inference_mode():
        expected = [encoder(batch) for batch in pixels.split(4)]
    assert torch.equal(table.pooled, torch.cat([o.pooled for o in expected]))
    assert table.values is not None
    assert torch.equal(table.values, torch.cat([o.sequence for o in expected]).flatten(0, 1))
    assert table.present is not None and table.present.tolist() == [True] * 4 + [False] + [True] * 3 + [False, True]


class _Echo(_LiteConv):
    """Returns a view of its input pixels as its region sequence (an encoder may: nothing forbids it)."""

    name = "lite-echo"

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        self.forwards += 1
        return EncoderOutput(pooled=pixel_values.mean(dim=(2, 3)), sequence=pixel_values.flatten(2).transpose(1, 2))

    def cache_identity(self) -> dict[str, Any]:
        return {"encoder": "lite-echo", "pre": self._pre.identity()}


def test_batches_are_normalised_into_one_buffer_and_outputs_never_share_it(mixed: list[Example]) -> None:
    """Every batch's float32 pixels are written into the same buffer (no fresh 38 MB per batch to fault in), and an
    encoder output that is a view of its input is copied before the next batch overwrites the buffer: the table
    still holds each batch's own pixels."""
    encoder = _Echo()
    encoder.requires_grad_(False)
    seen: list[int] = []
    forward = encoder.forward

    def spy(pixel_values: torch.Tensor) -> EncoderOutput:
        seen.append(pixel_values.untyped_storage().data_ptr())
        return forward(pixel_values)

    encoder.forward = spy  # type: ignore[method-assign]
    table = compute_features(encoder, mixed, need_sequence=True, batch_size=4, num_workers=0, backend="torch")
    assert len(seen) == 3 and len(set(seen)) == 1  # 4 + 4 + 2 rows, one buffer
    pixels = torch.stack([_float32_pixels(e, 32) for e in mixed])
    assert table.values is not None
    assert torch.equal(table.values, pixels.flatten(2).transpose(1, 2).flatten(0, 1))
    assert torch.equal(table.pooled, pixels.mean(dim=(2, 3)))


def test_lite_preprocessor_gives_the_float32_pixels_it_gave_before(examples: list[Example]) -> None:
    pre = LitePreprocessor(image_size=40, resize="stretch")
    for example in examples[:5]:
        image = open_image(example.image)
        assert pre.to_uint8(image).dtype == torch.uint8
        assert torch.equal(pre(image), _float32_pixels(example, 40))


def test_the_backend_is_checked_once_for_all_shards(
    mixed: list[Example], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache fill encodes its misses shard by shard; the onnxruntime session is loaded and checked against torch
    once (not once per shard: ~3 CPU-seconds each for EfficientNet-Lite0), and every shard comes from it."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (extra `export`)")
    made: list[Any] = []
    real = compute.OnnxEncoder

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(compute, "OnnxEncoder", Counting)
    encoder = _LiteConv()
    encoder.backend = "onnxruntime"
    cache = FeatureCache(tmp_path / "cache", shard_examples=4, encode_workers=0)
    table = cache.get(encoder, mixed, need_sequence=False)
    assert cache.stats.computed == len(mixed) and len(made) == 1
    plain = compute_features(encoder, mixed, need_sequence=False, backend="torch")
    # onnxruntime against torch: the backend's own tolerance (see mmfuse.encoders.runtime, ONNX_ATOL / ONNX_RTOL)
    assert torch.allclose(table.pooled, plain.pooled, atol=1e-4, rtol=1e-4)


def test_auto_weighs_the_export_against_all_the_misses(
    mixed: list[Example], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto`` exports when the job is large enough, even though each shard alone is not (10 misses in shards of
    4, the threshold set to 10)."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (extra `export`)")
    monkeypatch.setattr(compute, "AUTO_MIN_INPUTS", 10)
    cache = FeatureCache(tmp_path / "cache", shard_examples=4, encode_workers=0)
    cache.get(_LiteConv(), mixed, need_sequence=False)
    assert len(list(onnx_dir(tmp_path / "cache").glob("*.onnx"))) == 1


def _new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the backend choices made in this process, as a new process would not have them."""
    monkeypatch.setattr(compute, "_CHOSEN", compute.weakref.WeakKeyDictionary())


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_a_later_process_loads_a_checked_export_without_checking_it_again(
    backend: str, mixed: list[Example], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first fill checks the export against torch and records it beside the file; a later process (the choices
    of this one forgotten) loads the file without running the encoder on torch at all, and gets the same
    features."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (extra `export`)")
    monkeypatch.setattr(compute, "AUTO_MIN_INPUTS", 1)
    first = _LiteConv()
    first.backend = backend
    table = FeatureCache(tmp_path / "a", encode_workers=0).get(first, mixed, need_sequence=True)
    assert first.forwards >= 1  # the check ran torch
    (export,) = onnx_dir(tmp_path / "a").glob("*.onnx")
    record = compute.check_record_file(export)
    assert record.is_file()
    _new_process(monkeypatch)
    later = _LiteConv()
    later.backend = backend
    cache = FeatureCache(tmp_path / "b", encode_workers=0)
    shutil.copytree(onnx_dir(tmp_path / "a"), onnx_dir(tmp_path / "b"), copy_function=shutil.copy2)
    again = cache.get(later, mixed, need_sequence=True)
    assert later.forwards == 0 and cache.stats.computed == len(mixed)
    assert torch.equal(again.pooled, table.pooled) and again.values is not None and table.values is not None
    assert torch.equal(again.values, table.values)


@pytest.mark.parametrize("change", ["file", "environment", "auto after onnxruntime", "damaged record", "odd grid"])
def test_a_check_record_counts_only_for_the_same_file_environment_and_verdict(
    change: str, mixed: list[Example], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another file (re-exported or touched), another onnxruntime / torch / CPU, or ``auto`` with a record that
    never timed onnxruntime against torch (made for ``backend: onnxruntime``): the check runs again."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (extra `export`)")
    monkeypatch.setattr(compute, "AUTO_MIN_INPUTS", 1)
    first = _LiteConv()
    first.backend = "onnxruntime"
    FeatureCache(tmp_path / "c", encode_workers=0).get(first, mixed[:4], need_sequence=False)
    (export,) = onnx_dir(tmp_path / "c").glob("*.onnx")
    _new_process(monkeypatch)
    later = _LiteConv()
    later.backend = "auto" if change == "auto after onnxruntime" else "onnxruntime"
    if change == "file":
        stat = export.stat()
        os.utime(export, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "environment":
        real = compute._environment
        monkeypatch.setattr(compute, "_environment", lambda: {**(real() or {}), "onnxruntime": "0.0.0"})
    elif change == "damaged record":
        compute.check_record_file(export).write_text('{"format": 1, "file": ')
    elif change == "odd grid":
        kept = json.loads(compute.check_record_file(export).read_text())
        compute.check_record_file(export).write_text(json.dumps({**kept, "grid": ["8", 8]}))
    FeatureCache(tmp_path / "c", encode_workers=0).get(later, mixed[4:], need_sequence=False)
    assert later.forwards >= 1  # checked against torch again
    record = json.loads(compute.check_record_file(export).read_text())
    assert record["backend"] == later.backend  # and the new check is what the record says now


@pytest.mark.slow
def test_efficientnet_lite0_features_are_bit_identical_to_the_float32_pixels(examples: list[Example]) -> None:
    """The packaged EfficientNet-Lite0 on torch: uint8 transport through 2 workers, same features as its forward
    on the float32 pixels."""
    encoder = real_image_encoder()
    encoder.freeze()
    some = examples[:8]
    table = compute_features(encoder, some, need_sequence=True, batch_size=4, num_workers=2, backend="torch")
    pixels = torch.stack([_float32_pixels(e, 224) for e in some])
    with torch.inference_mode():
        expected = [encoder(batch) for batch in pixels.split(4)]
    assert torch.equal(table.pooled, torch.cat([o.pooled for o in expected]))
    assert table.values is not None
    assert torch.equal(table.values, torch.cat([o.sequence for o in expected]).flatten(0, 1))


def test_onnxruntime_threads_sleep_when_idle(mixed: list[Example], tmp_path: Path) -> None:
    """The session's idle intra-op threads do not spin: in a cache fill they share the cores with the DataLoader
    workers (spinning cost 9-12 % more CPU-seconds for the whole fill, docs/performance.md)."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (extra `export`)")
    encoder = _LiteConv()
    example = torch.stack([encoder.preprocess(open_image(e.image)) for e in mixed[:2]])
    runner = compute.OnnxEncoder(encoder, example, tmp_path / "lite.onnx")
    assert runner.session is not None
    options = runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_temporary_export_is_not_kept(mixed: list[Example]) -> None:
    """``backend="onnxruntime"`` without ``onnx_dir`` exports to a temporary folder: neither its choice nor its
    session outlive the call (each such call would otherwise keep a session alive as long as the encoder)."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (extra `export`)")
    encoder = _LiteConv()
    compute_features(encoder, mixed[:3], need_sequence=False, backend="onnxruntime")
    assert encoder not in compute._CHOSEN


@pytest.mark.parametrize("workers", [0, 2])
def test_a_multi_shard_fill_runs_one_dataloader_and_each_shard_is_bit_identical(
    workers: int, mixed: list[Example], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold fill of 10 images in shards of 4 makes one DataLoader (its workers forked once, not once per shard:
    ~2 GB forked 12 times on MVSA-Single), still writes a shard per 4 inputs, and each shard's features equal
    ``compute_features`` of that shard alone (batched as before: batches of 3 restart at each shard's start)."""
    loaders: list[Any] = []
    real = compute.DataLoader

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            loaders.append(self)

    monkeypatch.setattr(compute, "DataLoader", Counting)
    encoder = _LiteConv()
    cache = FeatureCache(tmp_path / "cache", shard_examples=4, encode_workers=workers, dtype="float32")
    table = cache.get(encoder, mixed, need_sequence=True, batch_size=3, num_workers=workers)
    assert len(loaders) == 1 and cache.stats.computed == len(mixed)
    (folder,) = cache._folders.values()
    assert sorted(len(read_header(p).keys) for p in folder.path.iterdir() if is_shard_file(p)) == [2, 4, 4]
    for start in range(0, len(mixed), 4):
        alone = compute_features(encoder, mixed[start : start + 4], need_sequence=True, batch_size=3, backend="torch")
        rows = slice(start, start + 4)
        assert torch.equal(table.pooled[rows], alone.pooled)
        assert table.values is not None and alone.values is not None and table.offsets is not None
        assert torch.equal(
            table.values[int(table.offsets[start]) : int(table.offsets[min(start + 4, 10)])], alone.values
        )


class _AlonePeers(Peers):
    """Process 0 of 2 whose partner never writes anything: each meeting returns at once and is counted."""

    def __init__(self) -> None:
        super().__init__(0, 2)
        self.waits: list[str] = []

    def wait(self, what: str) -> None:
        self.waits.append(what)

    def most(self, n: int, what: str) -> int:
        return n

    def gather(self, item: Any, what: str) -> list[Any]:
        self.waits.append(what)
        return [item] * self.world


def test_a_process_share_is_one_dataloader_with_a_meeting_after_every_shard(
    mixed: list[Example], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under several processes a process encodes its share in one pass (one DataLoader) and still meets the
    others after every shard; the inputs its partner was to write (it wrote none) are encoded in a second pass."""
    loaders: list[Any] = []
    real = compute.DataLoader

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            loaders.append(self)

    monkeypatch.setattr(compute, "DataLoader", Counting)
    peers = _AlonePeers()
    cache = FeatureCache(tmp_path / "cache", shard_examples=2, encode_workers=0).across(peers)
    encoder = _LiteConv()
    table = cache.get(encoder, mixed, need_sequence=False)
    keys = ContentHasher().keys(mixed, modality="image")
    owned = sum(peers.owns(k) for k in set(keys))
    assert 2 < owned < len(mixed)  # a share of several shards, and a partner's share left to fill
    rounds = [w for w in peers.waits if w.startswith("the end of round")]
    assert len(rounds) == -(-owned // 2) and len(loaders) == 2
    assert cache.stats.computed == len(mixed) and cache.stats.peer_gaps == len(mixed) - owned
    plain = compute_features(encoder, mixed, need_sequence=False, backend="torch")
    # batched otherwise (2 per shard here, 10 at once there): a float32 convolution may sum in another order, ~1e-7
    assert torch.allclose(table.pooled, plain.pooled, atol=1e-6, rtol=1e-5)
