"""Frozen encoders filling the feature cache on onnxruntime (``model.<modality>_encoder.backend``).

Tolerance of every comparison: ``ONNX_ATOL`` / ``ONNX_RTOL`` (1e-4 absolute + 1e-4 relative), the one the backend
itself checks on the first inputs. onnxruntime and torch compute the same float32 graph with other kernels and
summation orders (BatchNorm folded into the convolutions); the differences measured are ~2e-5 on EfficientNet-Lite0
grids (values up to 6) and MiniLM states, well inside it, on any CPU kind.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from _tiny import real_image_encoder, real_text_encoder, tiny_bert_dir, tiny_resnet_dir
from mmfuse.cache import FeatureCache
from mmfuse.cache.inventory import clear_cache
from mmfuse.cache.location import onnx_dir
from mmfuse.config import ConfigError, config_from
from mmfuse.data import Example
from mmfuse.encoders import EncoderOutput, ImageEncoder
from mmfuse.encoders._preprocess import LitePreprocessor
from mmfuse.encoders.runtime import ONNX_ATOL, ONNX_RTOL
from mmfuse.features import compute_features
from mmfuse.features.table import FeatureTable

pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (extra `export`)")


def _close(a: FeatureTable, b: FeatureTable) -> None:
    assert torch.allclose(a.pooled, b.pooled, atol=ONNX_ATOL, rtol=ONNX_RTOL)
    assert (a.values is None) == (b.values is None) and a.grid == b.grid
    if b.values is not None:
        assert a.values is not None and torch.allclose(a.values, b.values, atol=ONNX_ATOL, rtol=ONNX_RTOL)
        assert torch.equal(a.valid, b.valid) and torch.equal(a.offsets, b.offsets)


@pytest.mark.parametrize("modality", ["text", "image"])
def test_onnxruntime_features_match_torch_and_the_export_is_kept(
    modality: str, request: pytest.FixtureRequest, examples: list[Example], tmp_path: Path, caplog: Any
) -> None:
    """A tiny HF model (BERT text, ResNet image): onnxruntime's features within the tolerance of torch's; the ONNX
    file is written once into ``onnx_dir`` and loaded, not exported again, by the next run."""
    encoder = request.getfixturevalue(f"{modality}_encoder")
    torch_table = compute_features(encoder, examples, need_sequence=True, batch_size=16, backend="torch")
    with caplog.at_level(logging.INFO, logger="mmfuse.features"):
        ort_table = compute_features(
            encoder, examples, need_sequence=True, batch_size=16, backend="onnxruntime", onnx_dir=tmp_path
        )
    _close(ort_table, torch_table)
    # the export, and the record of its check against torch (a later process loads it without the check)
    assert sorted(p.name[p.name.index(".") :] for p in tmp_path.iterdir()) == [".onnx", ".onnx.checked.json"]
    assert "runs on onnxruntime (exported to" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmfuse.features"):
        again = compute_features(
            encoder, examples, need_sequence=False, batch_size=16, backend="onnxruntime", onnx_dir=tmp_path
        )
    assert "runs on onnxruntime (loaded" in caplog.text
    assert torch.allclose(again.pooled, torch_table.pooled, atol=ONNX_ATOL, rtol=ONNX_RTOL)


def test_auto_runs_torch_for_a_small_dataset(image_encoder: ImageEncoder, examples: list[Example], tmp_path: Path):
    """``auto`` with few inputs and no export on disk: the export would cost more than it saves, so torch runs
    (bit-identical to backend torch) and nothing is exported."""
    auto = compute_features(image_encoder, examples, need_sequence=False, backend="auto", onnx_dir=tmp_path)
    plain = compute_features(image_encoder, examples, need_sequence=False, backend="torch")
    assert torch.equal(auto.pooled, plain.pooled)
    assert not any(tmp_path.iterdir())


class _NoisyEncoder(ImageEncoder):
    """An image encoder whose output is not a function of its input (noise added): its ONNX graph gives other
    numbers than torch, beyond any tolerance."""

    name = "noisy"
    dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self._pre = LitePreprocessor(image_size=32)
        self.requires_grad_(False)

    @property
    def preprocess(self) -> LitePreprocessor:  # type: ignore[override]
        return self._pre

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        pooled = self.conv(pixel_values).mean(dim=(2, 3))
        return EncoderOutput(pooled=pooled + torch.rand_like(pooled))

    def cache_identity(self) -> dict[str, Any]:
        return {"encoder": "noisy"}


def test_onnxruntime_beyond_tolerance_falls_back_to_torch_with_a_warning(
    examples: list[Example], tmp_path: Path, caplog: Any
) -> None:
    with caplog.at_level(logging.WARNING, logger="mmfuse.features"):
        table = compute_features(
            _NoisyEncoder(), examples, need_sequence=False, backend="onnxruntime", onnx_dir=tmp_path
        )
    assert table.pooled.shape == (len(examples), 4)
    assert "backend onnxruntime cannot run it" in caplog.text and "beyond the tolerance" in caplog.text
    assert "running it on torch" in caplog.text


def test_without_onnxruntime_falls_back_to_torch_with_a_warning(
    text_encoder: Any, examples: list[Example], tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with caplog.at_level(logging.WARNING, logger="mmfuse.features"):
        table = compute_features(text_encoder, examples, need_sequence=False, backend="onnxruntime", onnx_dir=tmp_path)
    plain = compute_features(text_encoder, examples, need_sequence=False, backend="torch")
    assert torch.equal(table.pooled, plain.pooled)
    assert "onnxruntime is not installed" in caplog.text and "running it on torch" in caplog.text


def test_a_cache_entry_serves_either_backend(
    image_encoder: ImageEncoder, examples: list[Example], tmp_path: Path
) -> None:
    """The backend is not part of the cache identity (their features agree within the tolerance): entries written
    on torch are read, not recomputed, when the encoder is set to onnxruntime, and no export is made for them."""
    image_encoder.backend = "torch"
    try:
        first = FeatureCache(tmp_path / "cache")
        written = first.get(image_encoder, examples, need_sequence=False)
        assert first.stats.computed == len(examples)
        image_encoder.backend = "onnxruntime"
        second = FeatureCache(tmp_path / "cache")
        read = second.get(image_encoder, examples, need_sequence=False)
    finally:
        image_encoder.backend = "auto"
    assert second.stats.computed == 0 and second.stats.loaded == len(examples)
    assert torch.equal(read.pooled, written.pooled)
    assert not onnx_dir(tmp_path / "cache").exists()


def test_config_backend_reaches_the_encoder_and_the_cache(tmp_path: Path, synth_splits: dict) -> None:
    """``model.image_encoder.backend: onnxruntime`` in a config: training fills the cache on onnxruntime (its
    export lands in the cache folder's ``onnx/``); a bad value is a config error naming the allowed ones."""
    from mmfuse.engine.classifier import MultimodalClassifier

    overrides = {
        "cache.dir": str(tmp_path / "cache"),
        "train.device": "cpu",
        "run.out_dir": str(tmp_path / "runs"),
        "run.quiet": True,
    }
    with pytest.raises(ConfigError, match="onnxruntime"):
        config_from(head="concat", **{"model.image_encoder.backend": "tensorrt"})
    cfg = config_from(
        head="concat",
        text_encoder=str(tiny_bert_dir()),
        image_encoder=str(tiny_resnet_dir()),
        epochs=1,
        batch_size=8,
        **{**overrides, "model.image_encoder.backend": "onnxruntime", "model.text_encoder.backend": "torch"},
    )
    clf = MultimodalClassifier(cfg).fit(synth_splits["train"], synth_splits["val"])
    assert clf.model.image_encoder.backend == "onnxruntime" and clf.model.text_encoder.backend == "torch"
    assert len(list(onnx_dir(tmp_path / "cache").glob("*.onnx"))) == 1  # the image encoder only
    clear_cache(tmp_path / "cache")  # `mmfuse cache clear` takes the exports too
    assert not onnx_dir(tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["text", "image"])
def test_offline_encoders_on_onnxruntime_match_torch(modality: str, examples: list[Example], tmp_path: Path) -> None:
    """MiniLM (all-MiniLM-L6-v2) and EfficientNet-Lite0: the features the cache stores, on both backends."""
    encoder = real_text_encoder() if modality == "text" else real_image_encoder()
    encoder.freeze()
    some = examples[:12]
    torch_table = compute_features(encoder, some, need_sequence=True, batch_size=8, backend="torch")
    ort_table = compute_features(
        encoder, some, need_sequence=True, batch_size=8, backend="onnxruntime", onnx_dir=tmp_path
    )
    _close(ort_table, torch_table)
    assert any(tmp_path.glob("*.onnx"))
