"""A request naming an image by path or URL (what a client moving a CSV to the server might send) is never
predicted from a blank: the item fails with a message that says why, the batch answer counts it, the log says so."""

from __future__ import annotations

import base64
import logging

import pytest
from _serve_runs import png_bytes

pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install "mmfuse[serve]"')


def test_batch_items_with_a_path_or_url_fail_counted_and_logged(client, caplog) -> None:
    good = {"text": "a cat", "image": base64.b64encode(png_bytes(seed=1)).decode()}
    items = [
        good,
        {"text": "moved file", "image": "images/0001.png"},
        {"text": "a link", "image": "https://example.com/memes/42.jpg"},
    ]
    with caplog.at_level(logging.WARNING, logger="mmfuse.serve"):
        r = client.post("/predict/batch", json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"][0] is not None and body["predictions"][1:] == [None, None]
    assert body["failed"] == 2
    details = {e["index"]: e["detail"] for e in body["errors"]}
    assert "'images/0001.png' looks like a file path" in details[1]
    assert "looks like a URL" in details[2] and "never reads files or fetches URLs" in details[2]
    assert "base64" in details[1]
    logged = " ".join(rec.getMessage() for rec in caplog.records if rec.name == "mmfuse.serve")
    assert "predict/batch: 2 of 3 items got no prediction" in logged and "items[1]" in logged

    r = client.post("/predict/batch", json={"items": [good]})
    assert r.json()["failed"] == 0 and r.json()["errors"] == []


def test_single_request_with_a_path_is_400_saying_so(client) -> None:
    r = client.post("/predict", json={"text": "x", "image": "/data/memes/img/01235.png"})
    assert r.status_code == 400
    assert "looks like a file path" in r.json()["detail"]
