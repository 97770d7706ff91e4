"""Tiny random encoders for tests, built through the real builders from folders made with ``save_pretrained``.

Plain functions (no pytest fixtures), importable as ``from _tiny import ...`` (``tests/`` is on ``sys.path``).
Model folders are made once per process (fixed seeds) in a temporary folder removed at exit; every
``tiny_*_encoder`` / ``make_encoders`` call returns a fresh encoder loaded from them, so tests may train or
freeze it freely.

- ``tiny_bert_dir()``: BERT, hidden 32, 2 layers, with pooler, a small lower-case WordPiece vocabulary
  (letters and ``##``-letters, so any ASCII text tokenizes without [UNK] runs), max 128 positions.
- ``tiny_clip_vision_dir()``: CLIP vision tower with projection: 32×32 px, 8 px patches (16 patch tokens),
  hidden 32 (``sequence_dim``), projection 24 (``dim``).
- ``tiny_resnet_dir()``: ResNet (basic blocks, 4 stages of 1, widths 8-16-24-32) saved like the hub's
  ``ResNetForImageClassification``: 64×64 px, 2×2 grid (4 regions), ``dim`` 32.
- ``ENCODER_KINDS`` / ``make_encoders(kind)``: text+image pairs; ``TINY_ENCODER_KINDS`` leaves out the real
  (slow: ~16 images/s at 224 px) MiniLM + EfficientNet-Lite0 pair.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mmfuse.encoders import ImageEncoder, TextEncoder, build_image_encoder, build_text_encoder

TINY_ENCODER_KINDS = ["tiny-bert+tiny-clip", "tiny-bert+tiny-resnet"]
ENCODER_KINDS = [*TINY_ENCODER_KINDS, "minilm+efficientnet-lite0"]

_DIRS: dict[str, Path] = {}
_ROOT: list[Path] = []

_WORDS = (  # noqa: SIM905
    "the a an and or not is are was be to of in on at for with this that it i you he she we they my your "
    "me no yes good bad love hate happy sad cat dog meme image text photo funny angry great awful day night "
    "red green blue black white big small new old man woman people when what why how all so very just like"
).split()


def _root() -> Path:
    if not _ROOT:
        root = Path(tempfile.mkdtemp(prefix="mmfuse-tiny-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _ROOT.append(root)
    return _ROOT[0]


def _vocab() -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    punct = list(".,!?'\"-:;()#@&*/%$")
    return [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
        *punct, *letters, *(f"##{c}" for c in letters), *_WORDS,
    ]  # fmt: skip


def tiny_bert_dir() -> Path:
    """Folder with a tiny random ``BertModel`` (with pooler) and its WordPiece ``BertTokenizer``."""
    if "bert" not in _DIRS:
        from transformers import BertConfig, BertModel, BertTokenizer

        out = _root() / "tiny-bert"
        vocab = _vocab()
        BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True).save_pretrained(out)
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        BertModel(config).save_pretrained(out)
        _DIRS["bert"] = out
    return _DIRS["bert"]


def tiny_clip_vision_dir() -> Path:
    """Folder with a tiny random ``CLIPVisionModelWithProjection`` and a ``CLIPImageProcessor`` config (32 px)."""
    if "clip" not in _DIRS:
        from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

        out = _root() / "tiny-clip-vision"
        torch.manual_seed(0)
        config = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=24,
        )
        CLIPVisionModelWithProjection(config).save_pretrained(out)
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
        _DIRS["clip"] = out
    return _DIRS["clip"]


def tiny_resnet_dir() -> Path:
    """Folder with a tiny random ``ResNetForImageClassification`` and a ``ConvNextImageProcessor`` config (64 px)."""
    if "resnet" not in _DIRS:
        from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

        out = _root() / "tiny-resnet"
        torch.manual_seed(0)
        config = ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic", num_labels=3
        )
        model = ResNetForImageClassification(config)
        with torch.no_grad():  # non-trivial BatchNorm statistics, so eval and train mode differ visibly
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        model.save_pretrained(out)
        ConvNextImageProcessorPil(size={"shortest_edge": 64}, crop_pct=0.875).save_pretrained(out)
        _DIRS["resnet"] = out
    return _DIRS["resnet"]


def tiny_text_encoder(**opts: Any) -> TextEncoder:
    """A fresh tiny BERT encoder, built by ``build_text_encoder`` from :func:`tiny_bert_dir` (options pass on)."""
    return build_text_encoder(str(tiny_bert_dir()), **opts)


def tiny_image_encoder(kind: str = "clip", **opts: Any) -> ImageEncoder:
    """A fresh tiny image encoder (``kind``: ``"clip"`` or ``"resnet"``), built by ``build_image_encoder``."""
    folders = {"clip": tiny_clip_vision_dir, "resnet": tiny_resnet_dir}
    if kind not in folders:
        raise ValueError(f"unknown tiny image encoder kind {kind!r}; known: {sorted(folders)}")
    return build_image_encoder(str(folders[kind]()), **opts)


def real_text_encoder(**opts: Any) -> TextEncoder:
    """A fresh MiniLM (all-MiniLM-L6-v2, offline package), ~2 s to load."""
    return build_text_encoder("minilm", **opts)


def real_image_encoder(**opts: Any) -> ImageEncoder:
    """A fresh EfficientNet-Lite0 (ImageNet weights, offline package), ~1 s to load."""
    return build_image_encoder("efficientnet-lite0", **opts)


def make_encoders(kind: str) -> tuple[TextEncoder, ImageEncoder]:
    """Fresh ``(text_encoder, image_encoder)`` for ``kind`` in :data:`ENCODER_KINDS`."""
    if kind == "tiny-bert+tiny-clip":
        return tiny_text_encoder(), tiny_image_encoder("clip")
    if kind == "tiny-bert+tiny-resnet":
        return tiny_text_encoder(), tiny_image_encoder("resnet")
    if kind == "minilm+efficientnet-lite0":
        return real_text_encoder(), real_image_encoder()
    raise ValueError(f"unknown encoder kind {kind!r}; known: {ENCODER_KINDS}")
