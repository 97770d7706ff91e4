"""``early_fusion`` with every text model type it accepts (tiny random models, tests/_tiny_text.py): an example's
logits do not depend on its batch-mates (issue 15: with a relative-position text model such as MPNet, image tokens
placed after the batch's padding moved with the longest text of the batch), the text models it cannot run are
refused when the head is built, and the head learns a task that needs both modalities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import tiny_image_encoder
from _tiny_text import ENCODER_ONLY_KINDS, JOINT_KINDS, TOWER_KINDS, tiny_text_dir, tiny_text_model
from mmfuse.encoders import build_text_encoder
from mmfuse.encoders.text import JOINT_MODEL_TYPES
from mmfuse.fusion import FusionInputs, build_head

TEXTS = ["a cat", "the quick brown fox jumps over the lazy dog", "hello", "four short words here"]


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def _inputs(head, texts: list[str], images: list[Image.Image]) -> FusionInputs:
    pixels = torch.stack([head.image_encoder.preprocess(im) for im in images])
    return FusionInputs(text_inputs=head.text_encoder.tokenize(texts), pixel_values=pixels)


def _head(kind: str, **params):
    torch.manual_seed(0)
    return build_head(
        "early_fusion",
        text_encoder=tiny_text_model(kind),
        image_encoder=tiny_image_encoder("clip"),
        num_classes=3,
        **params,
    )


def test_every_model_type_early_fusion_accepts_is_tested() -> None:
    assert {ENCODER_ONLY_KINDS[k] for k in JOINT_KINDS} == set(JOINT_MODEL_TYPES)


@pytest.mark.numerics
@pytest.mark.parametrize("kind", JOINT_KINDS)
def test_early_fusion_does_not_depend_on_batch_mates(kind: str) -> None:
    head = _head(kind).eval()
    images = _images(len(TEXTS))
    with torch.no_grad():
        batch = head(_inputs(head, TEXTS, images))
        for i in range(len(TEXTS)):
            alone = head(_inputs(head, TEXTS[i : i + 1], images[i : i + 1]))  # tokenized alone: no padding
            # the same numbers summed in another order: <= 1e-6 measured on every tiny model (vector and scalar
            # kernels); image tokens placed after the batch's padding moved MPNet's logits by more than 1e-3
            torch.testing.assert_close(alone.logits[0], batch.logits[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.fused[0], batch.fused[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(TOWER_KINDS))
def test_early_fusion_refuses_text_towers_at_build_time(kind: str) -> None:
    with pytest.raises(ValueError, match=r"does not support joint encoding; use a text model of type .*deberta-v2"):
        _head(kind)


def test_early_fusion_refuses_an_encoder_only_model_it_cannot_run_jointly(tmp_path) -> None:
    from transformers import AlbertConfig, AlbertModel

    config = AlbertConfig(vocab_size=165, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=130)  # fmt: skip
    AlbertModel(config).save_pretrained(tmp_path)
    for f in tiny_text_dir("bert").iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    text = build_text_encoder(str(tmp_path))
    with pytest.raises(ValueError, match=r"model type 'albert'\), does not support joint encoding"):
        build_head("early_fusion", text_encoder=text, image_encoder=tiny_image_encoder("clip"), num_classes=2)


def _task(n: int, seed: int, label: str) -> tuple[list[str], list[Image.Image], torch.Tensor]:
    """Texts with "good" or "bad" (``a``) among filler words of varying length (so batches are padded), red or blue
    noise images (``b``). ``label="text"``: the label is ``a``; ``"xor"``: ``a XOR b``, which neither modality alone
    tells."""
    rng = np.random.default_rng(seed)
    filler = ["the", "a", "cat", "dog", "day", "night", "meme", "photo", "red", "blue"]
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    texts = []
    for i in range(n):
        words = list(rng.choice(filler, rng.integers(1, 6)))
        words.insert(int(rng.integers(0, len(words) + 1)), "good" if a[i] else "bad")
        texts.append(" ".join(words))
    images = []
    for i in range(n):
        pixels = rng.integers(0, 60, (32, 32, 3))
        pixels[..., 0 if b[i] else 2] += 190  # red or blue
        images.append(Image.fromarray(pixels.astype(np.uint8)))
    return texts, images, torch.tensor(a if label == "text" else a ^ b)


def _train_and_test(kind: str, label: str, epochs: int) -> float:
    """Trains early_fusion (text encoder trainable, image encoder frozen: its features computed once) on 128
    examples; returns the accuracy on 128 others."""
    torch.manual_seed(0)
    text, image = tiny_text_model(kind), tiny_image_encoder("clip")
    image.freeze()
    head = build_head("early_fusion", text_encoder=text, image_encoder=image, num_classes=2, num_image_tokens=4)
    (texts, images, labels), (test_texts, test_images, test_labels) = _task(128, 0, label), _task(128, 1, label)
    with torch.no_grad():
        features = image(torch.stack([image.preprocess(im) for im in images]))
        test_features = image(torch.stack([image.preprocess(im) for im in test_images]))
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    for epoch in range(epochs):
        head.train()
        for i in torch.randperm(len(texts), generator=torch.Generator().manual_seed(epoch)).split(32):
            batch = FusionInputs(text_inputs=text.tokenize([texts[j] for j in i]), image_features=features.index(i))
            loss = torch.nn.functional.cross_entropy(head(batch).logits, labels[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    with torch.no_grad():
        logits = head(FusionInputs(text_inputs=text.tokenize(test_texts), image_features=test_features)).logits
    return (logits.argmax(-1) == test_labels).float().mean().item()


def test_early_fusion_with_deberta_learns_from_the_text() -> None:
    accuracy = _train_and_test("deberta-v3", "text", epochs=8)
    assert accuracy >= 0.9, accuracy  # chance is 0.5; 1.0 reached after 6 epochs here


@pytest.mark.slow
def test_early_fusion_with_deberta_learns_a_task_that_needs_both_modalities() -> None:
    accuracy = _train_and_test("deberta-v3", "xor", epochs=16)
    assert accuracy >= 0.9, accuracy  # chance is 0.5, and either modality alone says nothing; 1.0 after 13 epochs
