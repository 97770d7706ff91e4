"""Modality dropout (``train.image_dropout``): training hides images at the asked rate, validation never does, the
draws follow the seed, and a head that reads one modality refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _engine_support import make_config
from safetensors.torch import load_file

from mmfuse.config import ConfigError, config_from
from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.engine.trainer import hide_images
from mmfuse.fusion.concat import ConcatHead


def test_hide_images_rate_and_keeps_missing_images_missing() -> None:
    torch.manual_seed(0)
    keep = hide_images(None, 20_000, 0.3, torch.device("cpu"))
    assert keep.dtype == torch.bool and keep.shape == (20_000,)
    assert 0.68 < keep.float().mean().item() < 0.72
    present = torch.arange(20_000) % 2 == 0  # every odd row has no image
    both = hide_images(present, 20_000, 0.3, torch.device("cpu"))
    assert not both[~present].any()
    assert 0.68 < both[present].float().mean().item() < 0.72


@pytest.mark.parametrize("head", ["text_only", "image_only"])
def test_unimodal_head_refuses_image_dropout(head: str) -> None:
    with pytest.raises(ConfigError, match=rf"image_dropout.*{head}.*one modality only"):
        config_from(head=head, **{"train.image_dropout": 0.2})
    assert config_from(head=head).train.image_dropout == 0.0


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_image_dropout_out_of_range_is_a_config_error(value: float) -> None:
    with pytest.raises(ConfigError, match="image_dropout"):
        config_from(head="concat", **{"train.image_dropout": value})


def test_training_hides_images_validation_sees_all(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    forward = ConcatHead.forward

    def spy(self, inputs):
        n = len(inputs.image_features.pooled)
        present = inputs.image_present if inputs.image_present is not None else torch.ones(n, dtype=torch.bool)
        seen[self.training].append(present.cpu())
        return forward(self, inputs)

    monkeypatch.setattr(ConcatHead, "forward", spy)
    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 3, "image_dropout": 0.5})
    MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    hidden = 1 - torch.cat(seen[True]).float().mean().item()
    assert len(torch.cat(seen[True])) == 3 * len(synthetic_splits["train"])
    assert 0.35 < hidden < 0.65  # 210 draws at p = 0.5
    assert seen[False] and torch.cat(seen[False]).all()


def test_image_dropout_follows_the_seed(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    def weights(name: str, **train) -> dict[str, torch.Tensor]:
        cfg = make_config(synthetic_root, tmp_path, run={"name": name}, train={"epochs": 2, **train})
        MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
        return load_file(str(tmp_path / name / "checkpoints" / "last" / "model.safetensors"))

    a, b = weights("a", image_dropout=0.5), weights("b", image_dropout=0.5)
    plain = weights("plain")
    assert a.keys() == b.keys() == plain.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], plain[k]) for k in a)
