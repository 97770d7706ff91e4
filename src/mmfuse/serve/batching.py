"""Request batching: items that arrive together run through the model as one batch, on one worker thread.

A request submits its items (one for ``/predict``, many for ``/predict/batch``) and awaits their results. A collector
task takes the oldest waiting request, then adds more while the batch has room (``max_batch`` items) and the oldest
has waited less than ``max_wait``; the batch then runs in a single model thread, off the event loop, so the server
keeps accepting requests (and collecting the next batch) while the model works. A request with more items than
``max_batch`` runs alone, as one batch. With ``max_batch=1`` every request runs alone (no batching).

If a combined batch fails, each of its requests is retried alone, so one request's failure never fails another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["BatcherStats", "MicroBatcher", "QueueFullError"]

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger("mmfuse.serve")


class QueueFullError(RuntimeError):
    """More items are waiting than the batcher accepts (the server is overloaded; retry later)."""


@dataclass
class _Job(Generic[Item, Result]):
    items: list[Item]
    future: asyncio.Future[list[Result]]
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatcherStats:
    """Counters for ``/health`` and the benchmark: batches run, items run, and the largest batch."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    failures: int = 0

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class MicroBatcher(Generic[Item, Result]):
    """Collects items from concurrent requests into batches for ``run_batch``.

    Args:
        run_batch: runs one batch (a list of items) and returns one result per item, in order. Called in the
            batcher's single worker thread, never concurrently with itself.
        max_batch: at most this many items per batch (a larger request still runs, alone); 1 disables batching.
        max_wait_ms: how long the oldest waiting request may wait for others to join its batch.
        max_queue: at most this many items waiting; more are refused with :class:`QueueFullError`.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result]],
        *,
        max_batch: int = 16,
        max_wait_ms: float = 10.0,
        max_queue: int = 1024,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1 (1 = no batching), got {max_batch!r}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0 (milliseconds), got {max_wait_ms!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an int >= 1 (items), got {max_queue!r}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self._jobs: deque[_Job[Item, Result]] = deque()
        self._queued = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Starts the collector task and the model thread (call from the running event loop)."""
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmfuse-model")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="mmfuse-batcher")

    async def stop(self) -> None:
        """Stops collecting; waiting requests fail with ``CancelledError``; the model thread finishes its batch."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.cancel()
        self._queued = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        """True while the collector task is alive."""
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return self._queued

    # ------------------------------------------------------------------------------------------- requests

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Queues ``items`` (one request) and returns their results once their batch has run.

        Raises:
            QueueFullError: too many items are waiting already.
            RuntimeError: the batcher is not running.
            Exception: whatever ``run_batch`` raised for this request when run alone.
        """
        if not items:
            return []
        if not self.running or self._wakeup is None:
            raise RuntimeError("the batcher is not running; start() it inside the server's event loop")
        if self._queued + len(items) > self.max_queue and self._queued > 0:
            raise QueueFullError(f"{self._queued} items are already waiting (limit {self.max_queue}); retry shortly")
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(list(items), future))
        self._queued += len(items)
        self._wakeup.set()
        return await future

    # ------------------------------------------------------------------------------------------- collector

    async def _collect(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
            jobs = await self._gather(loop)
            self._queued -= sum(len(j.items) for j in jobs)
            jobs = [j for j in jobs if not j.future.done()]  # requests whose client went away
            if jobs:
                await self._run(jobs, loop)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Job[Item, Result]]:
        """The oldest job plus those that fit with it, waiting until its deadline for more to arrive."""
        assert self._wakeup is not None
        first = self._jobs.popleft()
        jobs, size = [first], len(first.items)
        deadline = first.arrived + self.max_wait
        while size < self.max_batch:
            if self._jobs:
                if size + len(self._jobs[0].items) > self.max_batch:
                    break  # the next request does not fit: it leads the next batch
                job = self._jobs.popleft()
                jobs.append(job)
                size += len(job.items)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        return jobs

    async def _run(self, jobs: list[_Job[Item, Result]], loop: asyncio.AbstractEventLoop) -> None:
        items = [item for job in jobs for item in job.items]
        try:
            results = await loop.run_in_executor(self._executor, self._call, items)
        except Exception as exc:
            if len(jobs) == 1:
                self.stats.failures += 1
                _settle(jobs[0].future, exc=exc)
                return
            log.warning("a batch of %d requests failed (%s); running them one by one", len(jobs), exc)
            for job in jobs:
                await self._run([job], loop)
            return
        start = 0
        for job in jobs:
            _settle(job.future, results=results[start : start + len(job.items)])
            start += len(job.items)

    def _call(self, items: list[Item]) -> list[Result]:
        results = list(self.run_batch(items))
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.largest = max(self.stats.largest, len(items))
        return results


def _settle(future: asyncio.Future[Any], *, results: Any = None, exc: BaseException | None = None) -> None:
    if future.done():  # cancelled: the client went away
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(results)
