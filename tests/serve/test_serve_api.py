"""The HTTP API on a tiny cross-attention model: predictions, every kind of bad input, health, info, schema, page."""

from __future__ import annotations

import base64
import math
import struct
import zlib

import numpy as np
import pytest
from _serve_runs import png_bytes

pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install "mmfuse[serve]"')


def _multipart(text: str | None = "a cat at night", image: bytes | None = None) -> dict:
    out: dict = {}
    if text is not None:
        out["data"] = {"text": text}
    if image is not None:
        out["files"] = {"image": ("meme.png", image, "image/png")}
    return out


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` pixels, with almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _direct(predictor, text: str, image: bytes):
    from mmfuse.serve import decode_image

    return predictor.predict([text], [predictor.prepare_image(decode_image(image))])[0]


# ----------------------------------------------------------------------------------------------- predictions


def test_multipart_prediction_has_every_field(client, tiny_predictor):
    image = png_bytes(seed=1)
    r = client.post("/predict", **_multipart("the full moon over the city", image))
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body["probabilities"]) == ["benign", "hateful"]
    assert math.isclose(sum(body["probabilities"].values()), 1.0, rel_tol=1e-9)
    assert body["threshold"] == pytest.approx(0.4)
    assert body["label"] == ("hateful" if body["probabilities"]["hateful"] >= 0.4 else "benign")
    assert 0.0 <= body["image_reliance"] <= 1.0
    grid, weights = body["attention"]["grid"], np.array(body["attention"]["weights"])
    assert grid == [4, 4] and weights.shape == (4, 4)  # tiny CLIP: 32 px / 8 px patches
    assert weights.sum() == pytest.approx(1.0, abs=1e-4)
    direct = _direct(tiny_predictor, "the full moon over the city", image)
    assert body["probabilities"] == pytest.approx(direct.probabilities, abs=1e-9)
    assert body["image_reliance"] == pytest.approx(direct.image_reliance, abs=1e-6)


def test_json_base64_and_data_url_give_the_multipart_result(client):
    image = png_bytes(seed=2)
    via_form = client.post("/predict", **_multipart("hello", image)).json()
    encoded = base64.b64encode(image).decode()
    for payload in (encoded, f"data:image/png;base64,{encoded}", base64.urlsafe_b64encode(image).decode().rstrip("=")):
        r = client.post("/predict", json={"text": "hello", "image": payload})
        assert r.status_code == 200, r.text
        assert r.json()["probabilities"] == pytest.approx(via_form["probabilities"], abs=1e-12)


def test_empty_text_is_valid(client):
    r = client.post("/predict", **_multipart("", png_bytes()))
    assert r.status_code == 200, r.text
    assert r.json()["attention"] is not None  # padding rows are left out of the mean, [CLS]/[SEP] remain


def test_jpeg_gray_and_rgba_images_are_accepted(client):
    from io import BytesIO

    from PIL import Image

    for mode in ("L", "RGBA", "P"):
        buf = BytesIO()
        Image.new(mode, (50, 40)).save(buf, format="PNG")
        assert client.post("/predict", **_multipart("x", buf.getvalue())).status_code == 200
    assert client.post("/predict", **_multipart("x", png_bytes(fmt="JPEG"))).status_code == 200


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        ({"json": {"text": "only text"}}, "image"),
        ({"json": {"image": base64.b64encode(png_bytes()).decode()}}, "text"),
        (_multipart("text but no image"), "image"),
        (_multipart(None, png_bytes()), "text"),
    ],
)
def test_missing_fields_are_422_naming_the_field(client, kwargs, missing):
    r = client.post("/predict", **kwargs)
    assert r.status_code == 422, r.text
    assert [e["loc"][-1] for e in r.json()["detail"]] == [missing]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"text": 5, "image": "AAAA"}', b'{"text": "a", "image": null}', b'"just a string"'],
)
def test_malformed_json_is_422(client, body):
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)


@pytest.mark.parametrize(
    "image",
    [b"definitely not an image", b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, png_bytes()[:200]],
    ids=["text", "empty", "png-signature-only", "truncated"],
)
def test_non_image_bytes_are_400_with_a_message(client, image):
    r = client.post("/predict", **_multipart("x", image))
    assert r.status_code == 400, r.text
    assert "image" in r.json()["detail"]


def test_bad_base64_is_400(client):
    r = client.post("/predict", json={"text": "x", "image": "this is not base64!"})
    assert r.status_code == 400
    assert "base64" in r.json()["detail"]


def test_decompression_bomb_is_413_before_decoding(client):
    bomb = _png_header_only(30_000, 30_000)  # 900 Mpx claimed in ~100 bytes
    assert len(bomb) < 200
    for r in (
        client.post("/predict", **_multipart("x", bomb)),
        client.post("/predict", json={"text": "x", "image": base64.b64encode(bomb).decode()}),
        client.post("/predict", **_multipart("x", _png_header_only(1200, 1000))),  # 1.2 Mpx > the 1 Mpx cap
    ):
        assert r.status_code == 413, r.text
        assert "pixels" in r.json()["detail"]


def test_oversized_upload_is_413(client):
    big = b"\0" * 700_000  # over the 600 KB request limit: refused from Content-Length, unread
    r = client.post("/predict", **_multipart("x", big))
    assert r.status_code == 413
    assert "700" in r.json()["detail"] and "600000" in r.json()["detail"]
    image_too_big = b"\0" * 400_000  # under the request limit, over the 300 KB image limit
    r = client.post("/predict", **_multipart("x", image_too_big))
    assert r.status_code == 413 and "300000" in r.json()["detail"]


def test_oversized_chunked_upload_without_content_length_is_413(client):
    def body():
        for _ in range(100):
            yield b"x" * 10_000  # 1 MB in all, streamed with Transfer-Encoding: chunked

    r = client.post("/predict", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_too_long_text_is_422(client):
    r = client.post("/predict", **_multipart("x" * 2_001, png_bytes()))
    assert r.status_code == 422
    assert "2000" in r.json()["detail"][0]["msg"]


def test_other_content_types_are_415(client):
    r = client.post("/predict", content=b"text=hi", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert "multipart/form-data" in r.json()["detail"]
    assert client.post("/predict", content=b"hello").status_code == 415


def test_image_sent_as_a_text_field_is_422(client):
    r = client.post("/predict", data={"text": "x", "image": "not a file"})
    assert r.status_code == 422
    assert "file" in r.json()["detail"][0]["msg"]


def test_no_request_reaches_the_filesystem(client):
    for path in ("/static/../../../../etc/passwd", "/static/app.js/../../pyproject.toml", "/static/index.html"):
        assert client.get(path).status_code == 404
    r = client.post("/predict", json={"text": "x", "image": "/etc/passwd"})  # a path is just bad base64 here
    assert r.status_code == 400


# ----------------------------------------------------------------------------------------------- batch


@pytest.mark.numerics
def test_batch_matches_single_requests_and_isolates_bad_items(client):
    texts = ["a sunny day", "", "the moon and a much longer sentence about it"]
    images = [png_bytes(seed=i, width=40 + 10 * i) for i in range(3)]
    items = [{"text": t, "image": base64.b64encode(im).decode()} for t, im in zip(texts, images, strict=True)]
    items.insert(1, {"text": "broken", "image": base64.b64encode(b"GIF89a broken").decode()})
    r = client.post("/predict/batch", json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 4 and body["predictions"][1] is None
    assert [(e["index"], e["status"]) for e in body["errors"]] == [(1, 400)]
    good = [p for p in body["predictions"] if p is not None]
    for text, image, batched in zip(texts, images, good, strict=True):
        single = client.post("/predict", **_multipart(text, image)).json()
        # padding changes nothing: float rounding of another batch shape, <= 1e-8 measured (vector and scalar kernels)
        assert batched["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)


@pytest.mark.numerics
def test_batch_multipart_pairs_fields_in_order(client):
    images = [png_bytes(seed=5), png_bytes(seed=6)]
    files = [("image", (f"{i}.png", im, "image/png")) for i, im in enumerate(images)]
    r = client.post("/predict/batch", data={"text": ["first", "second"]}, files=files)
    assert r.status_code == 200, r.text
    second = client.post("/predict", **_multipart("second", images[1])).json()  # batched vs alone: as above
    assert r.json()["predictions"][1]["probabilities"] == pytest.approx(second["probabilities"], abs=1e-6)
    r = client.post("/predict/batch", data={"text": ["only one text"]}, files=files)
    assert r.status_code == 422


def test_batch_limits(client):
    item = {"text": "x", "image": base64.b64encode(png_bytes(width=8, height=8)).decode()}
    assert client.post("/predict/batch", json={"items": [item] * 9}).status_code == 422  # max_items=8
    assert client.post("/predict/batch", json={"items": []}).status_code == 422
    assert client.post("/predict/batch", json={"items": [{"text": "no image"}]}).status_code == 422
    assert client.post("/predict/batch", json={"items": [item] * 8}).status_code == 200


# ----------------------------------------------------------------------------------------------- health, info, docs


def test_health_and_info(client):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["head"] == "cross_attention"
    assert info["classes"] == ["benign", "hateful"]
    assert info["threshold"] == pytest.approx(0.4)
    assert info["inputs"] == ["text", "image"]
    assert info["attention"] is True and info["image_reliance"] is True
    assert info["backend"] == "torch"
    assert set(info["encoders"]) == {"text", "image"} and all(info["encoders"].values())
    import mmfuse

    assert info["version"] == mmfuse.__version__
    assert info["settings"]["max_items"] == 8


def test_openapi_schema_documents_both_body_kinds(client):
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health", "/info"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    components = schema["components"]["schemas"]
    assert set(components["PredictRequest"]["required"]) == {"text", "image"}
    assert components["PredictBatchRequest"]["properties"]["items"]["items"]["$ref"].endswith("/PredictRequest")
    assert "PredictionOut" in components
    assert client.get("/docs").status_code == 200


def _multipart_schema(schema: dict, path: str) -> dict:
    return schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]


def test_openapi_bodies_are_the_typed_models_with_this_servers_limits(client):
    """Both body kinds of both operations come from the models the routes validate with, so the schema shows this
    server's limits (the fixture's 2000 characters, 8 items) and what is required."""
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    item, batch = components["PredictRequest"], components["PredictBatchRequest"]
    assert item["properties"]["text"]["maxLength"] == 2000
    assert set(item["required"]) == {"text", "image"}
    assert batch["properties"]["items"]["maxItems"] == 8 and batch["properties"]["items"]["minItems"] == 1
    for path, model in (("/predict", "PredictRequest"), ("/predict/batch", "PredictBatchRequest")):
        body = schema["paths"][path]["post"]["requestBody"]["content"]
        assert body["application/json"]["schema"]["$ref"] == f"#/components/schemas/{model}"
    form = _multipart_schema(schema, "/predict")
    assert set(form["properties"]) == set(form["required"]) == {"text", "image"}
    assert form["properties"]["text"]["maxLength"] == 2000
    assert form["properties"]["image"]["type"] == "string"  # a file: binary / octet-stream
    assert {"format", "contentMediaType"} & set(form["properties"]["image"])
    form_batch = _multipart_schema(schema, "/predict/batch")
    assert set(form_batch["properties"]) == set(form_batch["required"]) == {"text", "image"}
    for name in ("text", "image"):
        assert form_batch["properties"][name]["type"] == "array"
        assert (form_batch["properties"][name]["minItems"], form_batch["properties"][name]["maxItems"]) == (1, 8)
    assert form_batch["properties"]["text"]["items"]["maxLength"] == 2000


def test_a_text_only_model_documents_and_takes_requests_without_an_image():
    """What a body requires follows the model: a text-only head needs no image, in the schema and in requests."""
    import torch
    from fastapi.testclient import TestClient

    from _tiny import tiny_text_encoder
    from mmfuse.fusion import build_head
    from mmfuse.serve import TorchPredictor, create_app

    torch.manual_seed(0)
    head = build_head("text_only", text_encoder=tiny_text_encoder(), image_encoder=None, num_classes=2)
    with TestClient(create_app(TorchPredictor(head, classes=["benign", "hateful"]))) as c:
        schema = c.get("/openapi.json").json()
        assert schema["components"]["schemas"]["PredictRequest"]["required"] == ["text"]
        assert _multipart_schema(schema, "/predict")["required"] == ["text"]
        assert _multipart_schema(schema, "/predict/batch")["required"] == ["text"]
        assert c.post("/predict", data={"text": "words only"}).status_code == 200
        assert c.post("/predict", json={"text": "words only"}).status_code == 200
        r = c.post("/predict/batch", data={"text": ["one", ""]})
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 2 and r.json()["failed"] == 0
        missing = c.post("/predict", files={"image": ("a.png", png_bytes())})
        assert missing.status_code == 422 and [e["loc"] for e in missing.json()["detail"]] == [["body", "text"]]


def test_multipart_text_sent_as_a_file_is_422_showing_the_file_by_name(client):
    files = [("text", ("caption.txt", b"a cat", "text/plain")), ("image", ("a.png", png_bytes(), "image/png"))]
    r = client.post("/predict/batch", files=files)  # on /predict, a second file is already one too many (400)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "text", 0]
    assert error["input"] == {"filename": "caption.txt", "size": 5, "content_type": "text/plain"}


def test_batch_multipart_over_max_items_is_422(client):
    files = [("image", (f"{i}.png", png_bytes(width=8, height=8), "image/png")) for i in range(8)]
    r = client.post("/predict/batch", data={"text": [str(i) for i in range(9)]}, files=files)  # 9 texts > 8
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "text"]]
    r = client.post("/predict/batch", data={"text": ["a", "b"]}, files=files[:1])
    assert r.status_code == 422 and "pair one of each" in r.json()["detail"][0]["msg"]


def test_multipart_malformed_or_with_too_many_files_is_400(client):
    r = client.post(
        "/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}
    )  # no boundary
    assert r.status_code == 400 and r.json()["detail"].startswith("malformed multipart body")
    files = [("image", (f"{i}.png", png_bytes(width=8, height=8), "image/png")) for i in range(2)]
    r = client.post("/predict", data={"text": "x"}, files=files)  # /predict takes one file
    assert r.status_code == 400 and "malformed multipart body" in r.json()["detail"]


def test_oversized_chunked_multipart_upload_is_413(client):
    def body():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(100):
            yield b"x" * 10_000  # 1 MB of file, streamed with Transfer-Encoding: chunked

    r = client.post("/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413, r.text
    assert "600000" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_both_operations_refuse_other_content_types_and_methods(client, path):
    r = client.post(path, content=b"<xml/>", headers={"content-type": "application/xml"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    assert client.get(path).status_code == 405


def test_page_and_its_files_are_served_with_safe_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'id="predict"' in page.text and "/static/app.js" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and 'fetch("/predict"' in script.text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


# ----------------------------------------------------------------------------------------------- robustness


def test_a_failing_model_gives_500_and_the_server_stays_up(tiny_predictor):
    from fastapi.testclient import TestClient

    from mmfuse.serve import TorchPredictor, create_app

    class Flaky(TorchPredictor):
        def _run(self, inputs):
            if inputs["input_ids"].shape[0] == 1 and self.fail:
                raise RuntimeError("simulated model failure")
            return super()._run(inputs)

    flaky = Flaky(tiny_predictor.model, classes=tiny_predictor.classes, threshold=0.4)
    flaky.fail = False
    with TestClient(create_app(flaky), raise_server_exceptions=False) as c:
        flaky.fail = True
        r = c.post("/predict", **_multipart("x", png_bytes()))
        assert r.status_code == 500
        assert "RuntimeError" in r.json()["detail"] and "simulated" not in r.json()["detail"]  # no internals leak
        flaky.fail = False
        assert c.post("/predict", **_multipart("x", png_bytes())).status_code == 200
        assert c.get("/health").json()["status"] == "ok"
