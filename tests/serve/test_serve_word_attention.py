"""What the page draws: each word's attention over the image regions in ``/predict`` (heads with one attention row
per text token), and where the region grid lies on the uploaded image (``/info``'s ``image_crop``)."""

from __future__ import annotations

import numpy as np
import pytest
from _serve_runs import png_bytes

pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install "mmfuse[serve]"')

TEXT = "the full moon over unbelievably quiet city"


def _post(client, text: str, image: bytes) -> dict:
    r = client.post("/predict", data={"text": text}, files={"image": ("m.png", image, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def _token_rows(predictor, text: str, image: bytes) -> np.ndarray:
    """The head's own (Q, N) attention rows for the item, straight from the model."""
    from mmfuse.serve import decode_image

    inputs = predictor.make_inputs([text], [predictor.prepare_image(decode_image(image))])
    return np.asarray(predictor._run(inputs)["attention"][0], dtype=np.float64)


def test_each_word_gets_the_mean_attention_of_its_own_tokens(client, tiny_predictor):
    image = png_bytes(seed=3)
    body = _post(client, TEXT, image)
    att = body["attention"]
    assert [w["word"] for w in att["words"]] == TEXT.split() and att["words_omitted"] == 0
    rows = _token_rows(tiny_predictor, TEXT, image)
    tokenizer = tiny_predictor.model.text_encoder.tokenizer
    start = 1  # [CLS]
    for entry in att["words"]:
        # the word's word pieces, tokenized alone: an independent count of where its tokens sit
        n = len(tokenizer(entry["word"], add_special_tokens=False)["input_ids"])
        want = rows[start : start + n].mean(axis=0).reshape(4, 4)
        # the API rounds weights to 6 decimals
        np.testing.assert_allclose(entry["weights"], want, atol=1e-6)
        start += n
    assert any(len(tokenizer(w, add_special_tokens=False)["input_ids"]) > 1 for w in TEXT.split())  # a split word


def test_words_past_the_view_are_counted_and_words_past_the_token_limit_are_zero(client):
    from mmfuse.model.prediction import MAX_VIEW_WORDS

    words = [f"w{i}" for i in range(MAX_VIEW_WORDS + 5)]
    att = _post(client, " ".join(words), png_bytes(seed=2))["attention"]
    assert len(att["words"]) == MAX_VIEW_WORDS and att["words_omitted"] == 5
    sums = np.array([np.sum(w["weights"]) for w in att["words"]])
    assert sums[0] == pytest.approx(1.0, abs=1e-4)  # read: a distribution over the regions
    assert sums[-1] == 0.0  # past the tiny BERT's max_length: never read, no map


def test_a_batch_gives_each_item_its_own_words(client):
    items = [{"text": "a cat", "image": _b64(png_bytes(seed=1))}, {"text": TEXT, "image": _b64(png_bytes(seed=2))}]
    r = client.post("/predict/batch", json={"items": items})
    assert r.status_code == 200, r.text
    got = [[w["word"] for w in p["attention"]["words"]] for p in r.json()["predictions"]]
    assert got == [["a", "cat"], TEXT.split()]


def test_info_says_where_the_grid_lies_on_the_image(client, tiny_predictor):
    processor = tiny_predictor._preprocess.processor
    assert processor.do_center_crop  # the tiny CLIP reads the centre square of an image
    assert client.get("/info").json()["image_crop"] == 1.0


def test_word_view_is_absent_for_a_head_with_one_pooled_query():
    """A head whose attention has one row (not one per token) has no word view; the response has no ``words``."""
    from mmfuse.model.prediction import Prediction
    from mmfuse.model.predictor import Predictor

    p = Prediction("a", {"a": 1.0, "b": 0.0}, attention=np.ones((2, 2)) / 4, token_attention=np.ones((1, 4)) / 4)
    predictor = Predictor.__new__(Predictor)
    predictor._tokenize = lambda texts: {}  # never called: one row is no word view
    assert predictor.word_attention("two words", p) is False
    assert "words" not in p.to_dict()["attention"]


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")
