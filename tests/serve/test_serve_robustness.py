"""A real server (uvicorn on 127.0.0.1) under mixed valid and malformed requests: no 5xx, and healthy after."""

from __future__ import annotations

import asyncio
import base64
import random
import struct
import zlib

import pytest
from _serve_runs import png_bytes, running_server

httpx = pytest.importorskip("httpx")


def _bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99)) + chunk(b"IEND", b"")


def _requests() -> dict[str, tuple[dict, set[int]]]:
    """Kind -> (httpx request arguments, the statuses it may get)."""
    image = png_bytes(seed=7)
    b64 = base64.b64encode(image).decode()
    return {
        "form": ({"url": "/predict", "data": {"text": "hi"}, "files": {"image": ("a.png", image)}}, {200}),
        "json": ({"url": "/predict", "json": {"text": "", "image": b64}}, {200}),
        "batch": ({"url": "/predict/batch", "json": {"items": [{"text": "a", "image": b64}] * 3}}, {200}),
        "not-image": ({"url": "/predict", "data": {"text": "x"}, "files": {"image": ("a.png", b"<html>")}}, {400}),
        "bad-base64": ({"url": "/predict", "json": {"text": "x", "image": "%%%"}}, {400}),
        "missing-image": ({"url": "/predict", "json": {"text": "x"}}, {422}),
        "bad-json": ({"url": "/predict", "content": b"{", "headers": {"content-type": "application/json"}}, {422}),
        "bomb": ({"url": "/predict", "data": {"text": "x"}, "files": {"image": ("b.png", _bomb())}}, {413}),
        "huge": ({"url": "/predict", "data": {"text": "x"}, "files": {"image": ("h.png", b"\0" * 700_000)}}, {413}),
        "no-type": ({"url": "/predict", "content": b"\x00\x01"}, {415}),
        "bad-multipart": (
            {"url": "/predict", "content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}},
            {400, 422},
        ),
        "empty-batch": ({"url": "/predict/batch", "json": {"items": []}}, {422}),
    }


def test_mixed_malformed_requests_never_get_5xx_and_leave_the_server_healthy(tiny_predictor):
    from mmfuse.serve import ServeSettings, create_app

    app = create_app(tiny_predictor, ServeSettings(max_request_bytes=600_000, max_image_bytes=300_000))
    kinds = _requests()
    order = [name for name in kinds for _ in range(10)]  # 120 requests, each kind 10 times
    random.Random(0).shuffle(order)
    statuses: dict[str, list[int]] = {name: [] for name in kinds}

    async def load(url: str) -> None:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            gate = asyncio.Semaphore(16)

            async def one(name: str) -> None:
                async with gate:
                    r = await client.request("POST", **kinds[name][0])
                    statuses[name].append(r.status_code)

            await asyncio.gather(*(one(name) for name in order))

    with running_server(app) as url:
        asyncio.run(asyncio.wait_for(load(url), timeout=120))
        health = httpx.get(f"{url}/health")
        after = httpx.post(f"{url}/predict", **{k: v for k, v in kinds["form"][0].items() if k != "url"})
    for name, (_, allowed) in kinds.items():
        assert set(statuses[name]) <= allowed, (name, statuses[name])
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert after.status_code == 200
