"""Helpers of the engine tests: small deterministic fake encoders (fast, no pretrained weights; the fixture
``fake_encoders`` puts them behind the real builder names) and a fast config on the synthetic data."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BertConfig, BertModel

from mmfuse.config import TrainConfig, validate_config
from mmfuse.encoders.base import EncoderOutput, ImageEncoder, TextEncoder


class FakeText(TextEncoder):
    supports_joint_encoding = True

    def __init__(self, name: str = "fake-text", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        cfg = BertConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        cfg._attn_implementation = "eager"
        self.model = BertModel(cfg, add_pooling_layer=False)
        self.dim = 32
        self.name = name
        self.seed = seed

    def tokenize(self, texts):
        ids = [[1, *[3 + zlib.crc32(w.encode()) % 120 for w in t.split()][:30], 2] for t in texts]
        n = max(map(len, ids))
        input_ids = torch.zeros(len(ids), n, dtype=torch.long)
        mask = torch.zeros(len(ids), n, dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def embed_tokens(self, inputs):
        return self.model.embeddings(input_ids=inputs["input_ids"])

    def encode_embeddings(self, embeds, mask):
        ext = (~mask)[:, None, None, :].to(embeds.dtype) * torch.finfo(embeds.dtype).min
        return self.model.encoder(embeds, attention_mask=ext).last_hidden_state

    def forward(self, inputs):
        mask = inputs["attention_mask"].bool()
        seq = self.encode_embeddings(self.embed_tokens(inputs), mask)
        return EncoderOutput(pooled=seq[:, 0], sequence=seq, mask=mask)

    def freeze(self, trainable_top_k=0):
        for p in self.parameters():
            p.requires_grad_(False)
        if trainable_top_k:
            for p in self.model.encoder.layer[-trainable_top_k:].parameters():
                p.requires_grad_(True)

    def cache_identity(self):
        return {"kind": "fake-text", "name": self.name, "seed": self.seed}


def _preprocess(image):
    return torch.from_numpy(np.asarray(image.convert("RGB").resize((32, 32)), dtype="float32") / 255.0).permute(2, 0, 1)


class FakeImage(ImageEncoder):
    def __init__(self, name: str = "fake-image", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed + 1)
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 24, 3, stride=2), nn.ReLU())
        self.dim = 24
        self.name = name
        self.seed = seed

    def preprocess(self, image):
        return _preprocess(image)

    def forward(self, pixel_values):
        f = self.conv(pixel_values).flatten(2).transpose(1, 2)  # (B, N, 24)
        return EncoderOutput(pooled=f.mean(1), sequence=f, mask=torch.ones(f.shape[:2], dtype=torch.bool))

    def freeze(self, trainable_top_k=0):
        for p in self.parameters():
            p.requires_grad_(False)

    def cache_identity(self):
        return {"kind": "fake-image", "name": self.name, "seed": self.seed}


def build_fake_text(name, **options):
    unknown = set(options) - {"seed"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for text encoder {name!r}; allowed: seed")
    return FakeText(name, **options)


def build_fake_image(name, **options):
    unknown = set(options) - {"seed", "image_size"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for image encoder {name!r}; allowed: seed, image_size")
    options.pop("image_size", None)  # the fake always reads 32x32
    return FakeImage(name, **options)


def make_config(root: Path, out: Path, **sections: Any) -> TrainConfig:
    """A fast config on the synthetic data; ``sections`` update the defaults section by section."""
    base: dict[str, Any] = {
        "data": {"root": str(root), "preset": "hateful_memes"},
        "model": {"text_encoder": {"name": "fake-text"}, "image_encoder": {"name": "fake-image"}, "head": "concat"},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 16, "seed": 0, "device": "cpu"},
        "run": {"out_dir": str(out), "name": "run", "quiet": True},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(base)


def scripted_validate(validate, auroc: dict[int, float] | None = None):
    """``Trainer._validate`` with the selection metric (AUROC) of epoch ``e`` set to ``auroc[e]``, by default
    ``0.5 + 0.1 * e``: every epoch improves, so each epoch commit writes the best checkpoint too (the crash tests
    need that write); everything else (loss, threshold, accuracy) is the real validation."""

    def scripted(self, epoch: int):
        metrics, out = validate(self, epoch)
        return {**metrics, "auroc": auroc[epoch] if auroc else 0.5 + 0.1 * epoch}, out

    return scripted
