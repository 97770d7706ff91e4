"""Can each head learn a label that only the *combination* of text and image determines?

Synthetic XOR task on precomputed features: each text carries a concept ``a`` in {0, 1} in one of its tokens,
each image a concept ``b`` in {0, 1} in one of its regions, and the label is ``a XOR b``. Either modality alone
says nothing about the label, so unimodal heads must stay near chance and fusion heads must clearly beat it.
Heads train on cached features (the encoders are never run), except ``early_fusion``, which runs a tiny text
transformer over token ids itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmfuse.encoders.base import EncoderOutput, ImageEncoder, TextEncoder
from mmfuse.fusion import FUSION_HEADS, FusionInputs, build_head

D_TEXT, D_IMAGE, MAX_T, N_REGIONS = 32, 24, 10, 9
N_TRAIN, N_TEST = 768, 512
UNIMODAL = {"text_only", "image_only"}
# zero_shot learns nothing (no weights; both towers of one CLIP/SigLIP): tests/engine/test_engine_two_towers.py
TRAINED = [n for n in FUSION_HEADS.names() if not getattr(FUSION_HEADS.get(n), "trains_nothing", False)]


class FeatureOnlyText(TextEncoder):
    """Stands for a frozen text encoder whose outputs were cached: it has a size, and must never run."""

    name, dim = "cached-text", D_TEXT

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        raise AssertionError("the head ran the text encoder although cached features were given")


class FeatureOnlyImage(ImageEncoder):
    name, dim = "cached-image", D_IMAGE

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:
        raise AssertionError("the head ran the image encoder although cached features were given")


class TinyTransformerText(TextEncoder):
    """A 1-layer transformer over token ids, with joint encoding, for ``early_fusion`` (which needs tokens)."""

    name, dim = "tiny-transformer", D_TEXT
    supports_joint_encoding = True

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, D_TEXT)
        self.pos = nn.Embedding(MAX_T, D_TEXT)
        self.norm = nn.LayerNorm(D_TEXT)
        layer = nn.TransformerEncoderLayer(D_TEXT, 2, 64, dropout=0.0, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def embed_tokens(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = inputs["input_ids"]
        return self.norm(self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device)))

    def encode_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds, src_key_padding_mask=~mask)


def xor_task(n: int, seed: int) -> tuple[FusionInputs, torch.Tensor]:
    """``n`` examples: features (token ids too) and labels ``a XOR b``; concept vectors fixed across calls."""
    concepts = torch.Generator().manual_seed(1234)
    text_concept = torch.randn(2, D_TEXT, generator=concepts) * 2.5  # one vector per value of a
    image_concept = torch.randn(2, D_IMAGE, generator=concepts) * 2.5

    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=g)
    b = torch.randint(0, 2, (n,), generator=g)
    lengths = torch.randint(4, MAX_T + 1, (n,), generator=g)
    text_mask = torch.arange(MAX_T)[None, :] < lengths[:, None]  # (n, T)
    concept_pos = (torch.rand(n, generator=g) * (lengths - 1)).long() + 1  # any valid token but [CLS] at 0

    tokens = torch.randn(n, MAX_T, D_TEXT, generator=g) * text_mask[..., None]
    tokens[torch.arange(n), concept_pos] += text_concept[a]
    regions = torch.randn(n, N_REGIONS, D_IMAGE, generator=g)
    regions[torch.arange(n), torch.randint(0, N_REGIONS, (n,), generator=g)] += image_concept[b]

    # token ids for the head that reads tokens: [CLS]=1, random filler words 10..99, concept word 2 + a, pad 0
    ids = torch.randint(10, 100, (n, MAX_T), generator=g)
    ids[:, 0] = 1
    ids[torch.arange(n), concept_pos] = 2 + a
    ids = ids * text_mask

    inputs = FusionInputs(
        text_inputs={"input_ids": ids, "attention_mask": text_mask.long()},
        text_features=EncoderOutput(pooled=tokens.sum(1) / lengths[:, None], sequence=tokens, mask=text_mask),
        image_features=EncoderOutput(
            pooled=regions.mean(1), sequence=regions, mask=torch.ones(n, N_REGIONS, dtype=torch.bool)
        ),
    )
    return inputs, a ^ b


def train_and_score(name: str, steps: int, **params: object) -> float:
    torch.manual_seed(0)
    train, y_train = xor_task(N_TRAIN, seed=0)
    test, y_test = xor_task(N_TEST, seed=1)
    if FUSION_HEADS.get(name).uses_text == "tokens":
        text_encoder: TextEncoder = TinyTransformerText(vocab=100)
        train.text_features = test.text_features = None
    else:
        text_encoder = FeatureOnlyText()
        train.text_inputs = test.text_inputs = None
    head = build_head(name, text_encoder=text_encoder, image_encoder=FeatureOnlyImage(), num_classes=2, **params)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    head.train()
    for _ in range(steps):
        idx = torch.randint(0, N_TRAIN, (64,), generator=g)
        loss = nn.functional.cross_entropy(head(train.index(idx)).logits, y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        return (head(test).logits.argmax(-1) == y_test).float().mean().item()


@pytest.mark.parametrize("name", TRAINED)
def test_fusion_heads_learn_xor_and_unimodal_heads_cannot(name: str) -> None:
    accuracy = train_and_score(name, steps=400)
    if name in UNIMODAL:
        assert accuracy <= 0.65, f"{name} reached {accuracy:.2f} on a label its modality alone cannot predict"
    else:
        assert accuracy >= 0.85, f"{name} reached only {accuracy:.2f} on the XOR task"


def test_linear_concat_cannot_learn_xor() -> None:
    """Why ``concat`` defaults to an MLP: a linear layer on a concatenation is additive in the modalities."""
    accuracy = train_and_score("concat", steps=400, hidden=0)
    assert accuracy <= 0.65, f"a linear layer on [image ; text] reached {accuracy:.2f} on XOR"


@pytest.fixture(scope="module")
def synthetic_real_features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[FusionInputs, torch.Tensor]]:
    """The data layer's synthetic XOR dataset (day/night captions × bright/dark pictures) through the frozen real
    MiniLM + EfficientNet-Lite0, encoded once: ``{"train": ..., "held_out": ...}`` (held_out = dev + test)."""
    import json

    from PIL import Image

    from _tiny import real_image_encoder, real_text_encoder
    from mmfuse.data.synthetic import make_synthetic

    root = make_synthetic(tmp_path_factory.mktemp("synthetic"), n=480, seed=0, image_size=64)
    text_encoder, image_encoder = real_text_encoder(), real_image_encoder()
    text_encoder.freeze()
    image_encoder.freeze()
    text_encoder.eval()
    image_encoder.eval()
    out = {}
    for split, files in {"train": ["train"], "held_out": ["dev", "test"]}.items():
        rows = [json.loads(line) for f in files for line in (root / f"{f}.jsonl").read_text().splitlines()]
        text_parts, image_parts = [], []
        with torch.no_grad():
            for i in range(0, len(rows), 32):
                chunk = rows[i : i + 32]
                text_parts.append(text_encoder(text_encoder.tokenize([r["text"] for r in chunk])))
                pixels = [image_encoder.preprocess(Image.open(root / r["img"]).convert("RGB")) for r in chunk]
                image_parts.append(image_encoder(torch.stack(pixels)))
        inputs = FusionInputs(text_features=_cat(text_parts), image_features=_cat(image_parts))
        out[split] = (inputs, torch.tensor([r["label"] for r in rows]))
    out["encoders"] = (text_encoder, image_encoder)
    return out


def _cat(parts: list[EncoderOutput]) -> EncoderOutput:
    """Concatenates encoder outputs along the batch, padding token sequences to the longest."""
    t = max(p.sequence.shape[1] for p in parts)
    pad = [(p.sequence, p.mask) for p in parts]
    seq = torch.cat([nn.functional.pad(s, (0, 0, 0, t - s.shape[1])) for s, _ in pad])
    mask = torch.cat([nn.functional.pad(m, (0, t - m.shape[1])) for _, m in pad])
    return EncoderOutput(pooled=torch.cat([p.pooled for p in parts]), sequence=seq, mask=mask)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TRAINED if FUSION_HEADS.get(n).uses_text != "tokens"])
def test_heads_on_frozen_real_encoders_and_synthetic_data(name: str, synthetic_real_features: dict) -> None:
    """The same claim on real pictures and captions: data layer's synthetic XOR set, frozen real encoders."""
    train, y_train = synthetic_real_features["train"]
    held_out, y_held_out = synthetic_real_features["held_out"]
    text_encoder, image_encoder = synthetic_real_features["encoders"]
    torch.manual_seed(0)
    head = build_head(name, text_encoder=text_encoder, image_encoder=image_encoder, num_classes=2)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    head.train()
    for _ in range(300):
        idx = torch.randint(0, len(y_train), (32,), generator=g)
        loss = nn.functional.cross_entropy(head(train.index(idx)).logits, y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        accuracy = (head(held_out).logits.argmax(-1) == y_held_out).float().mean().item()
    print(f"{name}: held-out accuracy {accuracy:.3f}")
    if name in UNIMODAL:
        assert accuracy <= 0.65, f"{name} reached {accuracy:.2f} on a label its modality alone cannot predict"
    else:
        assert accuracy >= 0.85, f"{name} reached only {accuracy:.2f} on the synthetic XOR set"
