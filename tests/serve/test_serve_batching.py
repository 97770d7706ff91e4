"""Request batching: the MicroBatcher on its own, then a real server batching concurrent requests off the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest
from _serve_runs import png_bytes, running_server

from mmfuse.serve.batching import MicroBatcher, QueueFullError


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


class Recorder:
    """A fake model: doubles each item, records batch sizes, fails on items < 0."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if any(i < 0 for i in items):
            raise ValueError(f"negative item in {items}")
        return [2 * i for i in items]


class Held:
    """A fake model that holds each batch until the test lets it go: requests queue behind it for as long as the
    test needs, so what the batcher does with them depends on the order of events, not on the clock."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()  # a batch is in the model
        self.release = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never released the model")
        return [2 * i for i in items]


async def until(condition) -> None:
    """Yields to the event loop (and the model thread) until ``condition()`` holds; the callers' overall 30-60 s
    timeouts catch a condition that never does."""
    while not condition():
        await asyncio.sleep(0.005)


async def _submit_all(batcher: MicroBatcher, jobs: list[list[int]]) -> list:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(job) for job in jobs), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_batches_up_to_max_batch():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=50)  # all 10 are queued before the batcher looks
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
        model = Held()
        batcher = MicroBatcher(model, max_batch=2, max_wait_ms=0, max_queue=3)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit([1, 2]))
            await until(model.entered.is_set)  # [1, 2] is in the model, which holds it
            waiting = asyncio.ensure_future(batcher.submit([3, 4, 5]))
            await until(lambda: batcher.queued == 3)  # waits behind it: the queue is full
            with pytest.raises(QueueFullError, match="retry"):
                await batcher.submit([6])
            model.release.set()
            assert await first == [2, 4] and await waiting == [6, 8, 10]
            assert await batcher.submit([6]) == [12]  # room again once the queue drained
        finally:
            model.release.set()
            await batcher.stop()

    _run(scenario())


def test_requests_that_wait_for_the_model_run_together_in_full_batches():
    async def scenario():
        model = Held()
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=0)  # no waiting for batch-mates: only the queue
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit([0]))
            await until(model.entered.is_set)
            rest = [asyncio.ensure_future(batcher.submit([i])) for i in range(1, 11)]
            await until(lambda: batcher.queued == 10)
            model.release.set()
            assert await first == [0] and [await r for r in rest] == [[2 * i] for i in range(1, 11)]
        finally:
            model.release.set()
            await batcher.stop()
        return model.batches

    assert _run(scenario()) == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]  # in arrival order


def test_a_lone_request_does_not_wait_for_batch_mates_forever():
    async def scenario():
        batcher = MicroBatcher(Recorder(), max_batch=16, max_wait_ms=30)
        await batcher.start()
        try:
            return await batcher.submit([7])  # nobody else comes: it runs once its wait is over
        finally:
            await batcher.stop()

    assert _run(scenario()) == [14]  # _run fails after 30 s if it never runs


@pytest.mark.parametrize(("kwargs", "match"), [({"max_batch": 0}, "max_batch"), ({"max_wait_ms": -1}, "max_wait_ms")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MicroBatcher(Recorder(), **kwargs)


def test_server_queues_requests_behind_a_busy_model_batches_them_and_refuses_past_the_limit(tiny_predictor):
    """A real server whose model holds its first batch until the test lets it go: meanwhile /health answers
    (inference runs off the event loop), 15 more requests wait, and one past ``max_queue`` gets 503; released, the
    15 run in full batches of ``max_batch``."""
    httpx = pytest.importorskip("httpx")
    from mmfuse.serve import ServeSettings, TorchPredictor, create_app

    entered, release, sizes = threading.Event(), threading.Event(), []

    class HeldPredictor(TorchPredictor):
        def _run(self, inputs):
            sizes.append(len(inputs["pixel_values"]))
            entered.set()
            if not release.wait(timeout=60):
                raise TimeoutError("the test never released the model")
            return super()._run(inputs)

    held = HeldPredictor(tiny_predictor.model, classes=tiny_predictor.classes, threshold=0.4)
    app = create_app(held, ServeSettings(max_batch=8, max_wait_ms=0, max_queue=15))
    image = png_bytes(seed=3)

    async def scenario(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def one(i: int):
                return await client.post("/predict", data={"text": f"item {i}"}, files={"image": ("a.png", image)})

            async def queued() -> int:
                r = await client.get("/health")  # answers although the model thread is busy
                assert r.status_code == 200, r.text
                return r.json()["queued"]

            first = asyncio.ensure_future(one(0))
            await until(entered.is_set)  # request 0 is in the model, alone
            rest = [asyncio.ensure_future(one(i)) for i in range(1, 16)]
            while await queued() < 15:
                await asyncio.sleep(0.005)
            refused = await one(16)
            release.set()
            return [await first, *[await r for r in rest]], refused, (await client.get("/health")).json()

    try:
        with running_server(app) as url:
            responses, refused, health = asyncio.run(asyncio.wait_for(scenario(url), timeout=120))
    finally:
        release.set()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "retry" in refused.json()["detail"]
    assert [r.status_code for r in responses] == [200] * 16
    assert sizes == [1, 8, 7]  # the 15 that waited ran together, max_batch at a time
    assert health["batches"] == 3 and health["queued"] == 0
