"""Items sent without an image: a model trained with missing-image handling (``data.on_missing_image: blank``, or
``train.image_dropout``) predicts them from the text alone, as training saw a missing image; any other model answers
422 saying why it needs an image and what to do. And the served page shows no image placeholder before an upload."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _serve_runs import make_checkpoint, png_bytes

pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install "mmfuse[serve]"')


@pytest.fixture(scope="module")
def blank_run(tmp_path_factory) -> Path:
    """A tiny cross-attention checkpoint whose training config kept missing images as blanks."""
    from mmfuse.data import DataConfig
    from mmfuse.engine.classifier import MultimodalClassifier

    folder = tmp_path_factory.mktemp("blank-run")
    clf = MultimodalClassifier.load(make_checkpoint(folder, "cross_attention", threshold=0.45))
    clf.config = clf.config.model_copy(update={"data": DataConfig(root=folder, on_missing_image="blank")})
    return clf.save(folder / "blank")


@pytest.fixture(scope="module")
def blank_client(blank_run):
    from fastapi.testclient import TestClient

    from mmfuse.serve import TorchPredictor, create_app

    with TestClient(create_app(TorchPredictor.from_run(blank_run))) as c:
        yield c


def _hidden_image_probabilities(predictor, text: str) -> list[float]:
    """What the model gives for ``text`` with a random image marked absent (its features zeroed, as training's
    blanks): the answer a text-only request must get, whatever stands in for the pixels."""
    import torch

    from mmfuse.fusion import FusionInputs
    from mmfuse.serve import decode_image

    pixels = predictor.prepare_image(decode_image(png_bytes(seed=7)))[None]
    tokens = predictor.make_inputs([text], [pixels[0]])
    text_inputs = {k: v for k, v in tokens.items() if k != "pixel_values"}
    with torch.inference_mode():
        out = predictor.model(FusionInputs(text_inputs=text_inputs, pixel_values=pixels,
                                           image_present=torch.tensor([False])))  # fmt: skip
    return torch.softmax(out.logits.double(), dim=-1)[0].tolist()


@pytest.mark.numerics
def test_a_text_only_request_is_predicted_from_the_text_when_trained_with_blank_images(blank_client, blank_run):
    from mmfuse.serve import TorchPredictor

    predictor = TorchPredictor.from_run(blank_run)
    assert predictor.missing_image_problem() is None
    info = blank_client.get("/info").json()
    assert info["image_required"] is False and info["inputs"] == ["text", "image"]
    schema = blank_client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    assert schema["required"] == ["text"]

    want = _hidden_image_probabilities(predictor, "a cat on a mat")
    for kwargs in ({"json": {"text": "a cat on a mat"}}, {"data": {"text": "a cat on a mat"}}):
        r = blank_client.post("/predict", **kwargs)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["image_present"] is False and body["attention"] is None  # no image: no map over it
        # the same float32 model on the same text; only the batch's padding and float64 softmax differ
        assert list(body["probabilities"].values()) == pytest.approx(want, abs=1e-6)
        assert math.isclose(sum(body["probabilities"].values()), 1.0, rel_tol=1e-9)

    import base64

    items = [{"text": "with a picture", "image": base64.b64encode(png_bytes(seed=1)).decode()}, {"text": "without"}]
    r = blank_client.post("/predict/batch", json={"items": items})
    assert r.status_code == 200, r.text
    shown = [p["image_present"] for p in r.json()["predictions"]]
    assert shown == [True, False] and r.json()["failed"] == 0
    r = blank_client.post("/predict/batch", data={"text": ["one", "two"]})  # multipart, no image at all
    assert r.status_code == 200 and [p["image_present"] for p in r.json()["predictions"]] == [False, False]


def test_modality_dropout_counts_as_missing_image_handling(tiny_predictor):
    from mmfuse.config import validate_config
    from mmfuse.serve import TorchPredictor

    trained = TorchPredictor(
        tiny_predictor.model, classes=tiny_predictor.classes, config=validate_config({"train": {"image_dropout": 0.3}})
    )
    assert trained.missing_image_problem() is None
    assert trained.predict(["words only"], [None])[0].image_present is False


@pytest.mark.parametrize(
    ("path", "kwargs", "loc"),
    [
        ("/predict", {"json": {"text": "only text"}}, ["body", "image"]),
        ("/predict", {"data": {"text": "only text"}}, ["body", "image"]),
        ("/predict/batch", {"json": {"items": [{"text": "only text"}]}}, ["body", "items", 0, "image"]),
    ],
)
def test_a_text_only_request_to_a_model_that_needs_an_image_is_422_saying_why(client, path, kwargs, loc):
    r = client.post(path, **kwargs)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == loc
    msg = error["msg"]
    assert msg.startswith("Field required: an image is required")
    assert "trained without missing-image handling" in msg and "data.on_missing_image: blank" in msg
    assert "Send an image" in msg
    assert client.get("/info").json()["image_required"] is True


# ----------------------------------------------------------------------------------------------- the page


class _Hidden(HTMLParser):
    """Collects the elements of a page that carry the ``hidden`` attribute: their tag, id and classes."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: list[tuple[str, str | None, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if "hidden" in named:
            self.hidden.append((tag, named.get("id"), (named.get("class") or "").split()))


def _rules(css: str) -> list[tuple[str, str]]:
    """``(selector, declarations)`` of every rule of a stylesheet without nested blocks (comments dropped)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    return [(sel.strip(), body) for sel, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css)]


def test_the_page_shows_no_image_placeholder_before_an_upload(client):
    """Every element the page starts hidden stays hidden: the ``hidden`` attribute only hides through the browser's
    own ``display: none``, which any rule of the page that sets ``display`` on the element overrides (``.stage``'s
    ``inline-block`` showed the empty preview as a broken image, "The chosen image"). So either no rule sets the
    display of a hidden element, or ``[hidden] { display: none !important }`` wins over them all."""
    page, css = client.get("/").text, client.get("/static/style.css").text
    parser = _Hidden()
    parser.feed(page)
    ids = {el_id for _, el_id, _ in parser.hidden}
    assert "stage" in ids and "result" in ids and "error" in ids
    # the preview image sits in the hidden stage, with no source until a file is chosen
    stage = page[page.index('id="stage"') : page.index("</div>", page.index('id="stage"'))]
    assert '<img id="preview"' in stage and "src=" not in stage

    rules = _rules(css)
    wins = any(
        re.fullmatch(r"\[hidden\]", part.strip()) and re.search(r"display\s*:\s*none\s*!important", body)
        for sel, body in rules
        for part in sel.split(",")
    )
    overriding = []
    for tag, el_id, classes in parser.hidden:
        names = {tag} | ({f"#{el_id}"} if el_id else set()) | {f".{c}" for c in classes}
        for sel, body in rules:
            display = re.search(r"display\s*:\s*([\w-]+)", body)
            if display is None or display.group(1) == "none":
                continue
            for part in sel.split(","):
                last = re.split(r"[\s>+~]+", part.strip())[-1]  # the element the selector picks
                if any(re.fullmatch(rf"{re.escape(n)}(?![\w-])(\S*)", last) for n in names):
                    overriding.append(f"{part.strip()} {{display: {display.group(1)}}} on {tag}#{el_id}")
    assert overriding, "the check must see .stage's display rule, or it checks nothing"
    assert wins, f"rules that would show hidden elements, with no [hidden] rule that wins: {overriding}"
