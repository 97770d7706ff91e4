"""Request batching: the MicroBatcher on its own, then a real server batching concurrent requests off the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from _serve_runs import png_bytes, running_server

from mmfuse.serve.batching import MicroBatcher, QueueFullError


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


class Recorder:
    """A fake model: doubles each item, records batch sizes, optionally sleeps or fails on items < 0."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if any(i < 0 for i in items):
            raise ValueError(f"negative item in {items}")
        return [2 * i for i in items]


async def _submit_all(batcher: MicroBatcher, jobs: list[list[int]]) -> list:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(job) for job in jobs), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_batches_up_to_max_batch():
    model = Recorder(delay=0.01)
    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=50)
    results = _run(_submit_all(batcher, [[i] for i in range(10)]))
    assert results == [[2 * i] for i in range(10)]  # each request gets its own result
    assert max(len(b) for b in model.batches) == 4
    assert len(model.batches) == 3  # 4 + 4 + 2
    assert model.threads == {"mmfuse-model_0"}  # one model thread, never the event loop's
    assert batcher.stats.items == 10 and batcher.stats.largest == 4


def test_max_batch_1_runs_every_request_alone():
    model = Recorder()
    results = _run(_submit_all(MicroBatcher(model, max_batch=1, max_wait_ms=50), [[i] for i in range(5)]))
    assert results == [[2 * i] for i in range(5)]
    assert [len(b) for b in model.batches] == [1] * 5


def test_a_request_larger_than_max_batch_runs_alone_as_one_batch():
    model = Recorder()
    results = _run(_submit_all(MicroBatcher(model, max_batch=4, max_wait_ms=20), [[1], list(range(10)), [2]]))
    assert results[1] == [2 * i for i in range(10)]
    assert list(range(10)) in model.batches


def test_a_failing_request_does_not_fail_its_batch_mates():
    model = Recorder()
    results = _run(_submit_all(MicroBatcher(model, max_batch=8, max_wait_ms=50), [[1], [-1], [3]]))
    assert results[0] == [2] and results[2] == [6]
    assert isinstance(results[1], ValueError)
    assert [1, -1, 3] in model.batches  # tried together first, then one by one


def test_the_queue_limit_refuses_with_queue_full():
    async def scenario():
        batcher = MicroBatcher(Recorder(delay=0.2), max_batch=2, max_wait_ms=0, max_queue=3)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit([1, 2]))  # runs (0.2 s)
            await asyncio.sleep(0.05)
            waiting = asyncio.ensure_future(batcher.submit([3, 4, 5]))  # waits: 3 queued
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFullError, match="retry"):
                await batcher.submit([6])
            assert await first == [2, 4] and await waiting == [6, 8, 10]
        finally:
            await batcher.stop()

    _run(scenario())


def test_a_lone_request_waits_at_most_max_wait():
    async def scenario():
        batcher = MicroBatcher(Recorder(), max_batch=16, max_wait_ms=30)
        await batcher.start()
        try:
            start = time.perf_counter()
            assert await batcher.submit([7]) == [14]
            return time.perf_counter() - start
        finally:
            await batcher.stop()

    assert _run(scenario()) < 1.0


@pytest.mark.parametrize(("kwargs", "match"), [({"max_batch": 0}, "max_batch"), ({"max_wait_ms": -1}, "max_wait_ms")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MicroBatcher(Recorder(), **kwargs)


def test_server_batches_concurrent_requests_and_stays_responsive(tiny_predictor):
    """16 clients at once against a model that takes 0.5 s per batch: they share batches, and /health answers
    while the model works (inference runs off the event loop)."""
    httpx = pytest.importorskip("httpx")
    from mmfuse.serve import ServeSettings, TorchPredictor, create_app

    class Slow(TorchPredictor):
        def _run(self, inputs):
            time.sleep(0.5)
            return super()._run(inputs)

    slow = Slow(tiny_predictor.model, classes=tiny_predictor.classes, threshold=0.4)
    app = create_app(slow, ServeSettings(max_batch=8, max_wait_ms=20))
    image = png_bytes(seed=3)

    async def client_load(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def one(i: int):
                return await client.post("/predict", data={"text": f"item {i}"}, files={"image": ("a.png", image)})

            async def health_while_busy():
                await asyncio.sleep(0.1)
                start = time.perf_counter()
                r = await client.get("/health")
                return r, time.perf_counter() - start

            return await asyncio.gather(asyncio.gather(*(one(i) for i in range(16))), health_while_busy())

    with running_server(app) as url:
        responses, (health, health_seconds) = asyncio.run(asyncio.wait_for(client_load(url), timeout=60))
        stats = httpx.get(f"{url}/health").json()
    assert [r.status_code for r in responses] == [200] * 16
    assert health.status_code == 200 and health_seconds < 0.3  # not stuck behind a 0.5 s batch
    assert stats["mean_batch"] > 2  # 16 requests in about 2-4 batches, not 16
