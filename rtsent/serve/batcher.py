"""The batching queue in front of the model: concurrent requests scored together, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rtsent.serve.metrics import Metrics


class QueueFull(Exception):
    """The bounded queue has no room: the caller answers 429."""


class ScoringFailed(Exception):
    """The model raised on a batch: its callers answer 500, the server carries on."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """Gathers concurrent requests into batches and scores them off the event loop, one batch at a time.

    `score(texts)` runs in a single worker thread (one model, one forward at a time) and returns arrays
    with one row per text (scores, token counts); while it runs, new requests pile up in the queue and form
    the next batch. Every caller gets its own rows of each array.
    """

    def __init__(self, score: Callable[[list[str]], tuple[np.ndarray, ...]], max_batch_size: int, max_wait_s: float,
                 max_queue: int, metrics: Metrics, log: Callable[[str], None]):
        self.score, self.max_batch_size, self.max_wait_s = score, max_batch_size, max_wait_s
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self.metrics, self.log = metrics, log
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="rtsent-score")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, texts: list[str]) -> tuple[np.ndarray, ...]:
        """The score function's arrays for one request's texts; raises QueueFull or ScoringFailed."""
        job = _Job(texts, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull from None
        return await job.future  # cancelled by the caller's timeout: the batcher then skips the job

    async def _loop(self) -> None:
        carry: _Job | None = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            if first.future.done():
                continue
            jobs, size = [first], len(first.texts)
            deadline = asyncio.get_running_loop().time() + self.max_wait_s
            while size < self.max_batch_size:
                job = await self._next(deadline)
                if job is None:
                    break
                if job.future.done():
                    continue
                if size + len(job.texts) > self.max_batch_size:
                    carry = job  # it starts the next batch: never split a request, never reorder
                    break
                jobs.append(job)
                size += len(job.texts)
            await self._score(jobs)

    async def _next(self, deadline: float) -> _Job | None:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), remaining)
        except asyncio.TimeoutError:
            return None

    async def _score(self, jobs: list[_Job]) -> None:
        texts = [t for job in jobs for t in job.texts]
        self.metrics.batch(len(texts))
        try:
            arrays = await asyncio.get_running_loop().run_in_executor(self.executor, self.score, texts)
        except Exception as exc:  # a model failure fails this batch's requests, never the batcher
            self.log(f"scoring a batch of {len(texts)} texts failed: {type(exc).__name__}: {exc}")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(ScoringFailed(f"{type(exc).__name__}: {exc}"))
            return
        start = 0
        for job in jobs:
            if not job.future.done():  # a timed-out caller is gone; its rows are dropped
                job.future.set_result(tuple(a[start : start + len(job.texts)] for a in arrays))
            start += len(job.texts)

    async def close(self) -> None:
        """Stop after the queue is empty (uvicorn has already waited for in-flight requests)."""
        if self.task is not None:
            while not self.queue.empty() and not self.task.done():
                await asyncio.sleep(0.01)
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)
