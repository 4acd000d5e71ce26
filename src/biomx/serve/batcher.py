"""Micro-batching: concurrent requests for one model share engine calls.

Requests queue on the event loop; one worker task per model takes rows from the head of the queue
until `max_batch` rows are waiting or `max_wait_ms` have passed since the oldest arrived, joins the
requests whose rows have the same trailing shape and dtype (an image of another size cannot share
a tensor), and runs the engine in the model's own worker thread, so the event loop never blocks
and the engine never runs twice at once. Each request gets back exactly its own rows.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

Result = tuple[np.ndarray, np.ndarray | None]


class QueueFull(Exception):
    """More rows are waiting than the queue holds: the client should retry later."""


@dataclass
class _Job:
    rows: np.ndarray
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple:
        return self.rows.shape[1:], self.rows.dtype.str


class MicroBatcher:
    """Joins the rows of concurrent `submit` calls into engine calls of at most `max_batch` rows.

    `run` maps (N, ...) rows to (predictions (N, ...), std (N, ...) or None); `on_batch(n)` and
    `on_depth(n)` report each engine call's rows and the rows waiting (metrics); `initializer` runs
    once in the engine's thread (e.g. to set its number of intra-op threads)."""

    def __init__(self, run: Callable[[np.ndarray], Result], *, max_batch: int, max_wait_ms: float,
                 max_queue_rows: int, on_batch: Callable[[int], None] = lambda n: None,
                 on_depth: Callable[[int], None] = lambda n: None,
                 initializer: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.run, self.max_batch, self.max_wait = run, max(1, int(max_batch)), max(0.0, max_wait_ms) / 1000
        self.max_queue_rows, self.on_batch, self.on_depth = max_queue_rows, on_batch, on_depth
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="biomx-engine",
                                           initializer=initializer)  # fmt: skip
        self._queue: deque[_Job] = deque()
        self._waiting = 0  # rows in the queue
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, rows: np.ndarray) -> Result:
        """This request's predictions (and std): its own rows, in order."""
        self._ensure_worker()
        if self._waiting + len(rows) > self.max_queue_rows and self._waiting:
            raise QueueFull(f"{self._waiting} rows are waiting")
        job = _Job(rows, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._waiting += len(rows)
        self.on_depth(self._waiting)
        assert self._wake is not None
        self._wake.set()
        return await job.future

    async def call(self, fn: Callable, *args):
        """Run `fn(*args)` in the engine's thread (e.g. an explanation), after what is queued there."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the worker

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        # A new event loop (a test client's portal, a restarted server): start afresh on it.
        self._loop, self._wake, self._queue, self._waiting = loop, asyncio.Event(), deque(), 0
        self._task = loop.create_task(self._work())

    async def _work(self) -> None:
        assert self._wake is not None
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._gather_window()
            jobs = self._take()
            if jobs:
                await self._run_jobs(jobs)

    async def _gather_window(self) -> None:
        """Wait until `max_batch` rows wait or the oldest request has waited `max_wait`."""
        assert self._wake is not None
        while self._waiting < self.max_batch:
            left = self._queue[0].arrived + self.max_wait - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Job]:
        """The oldest live request, and the queued ones that fit beside it (same key, <= max_batch
        rows in all; one larger request goes alone and the engine call is split)."""
        while self._queue and self._queue[0].future.done():  # timed out or cancelled while waiting
            self._waiting -= len(self._queue.popleft().rows)
        if not self._queue:
            self.on_depth(self._waiting)
            return []
        first = self._queue.popleft()
        jobs, rows, kept = [first], len(first.rows), deque()
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():
                self._waiting -= len(job.rows)
            elif job.key == first.key and rows + len(job.rows) <= self.max_batch:
                jobs.append(job)
                rows += len(job.rows)
            else:
                kept.append(job)
        self._queue = kept
        self._waiting -= rows
        self.on_depth(self._waiting)
        return jobs

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        joined = np.concatenate([job.rows for job in jobs]) if len(jobs) > 1 else jobs[0].rows
        try:
            preds, std = await loop.run_in_executor(self.executor, self._run_split, joined)
        except Exception as e:  # every waiting request hears of it; the worker goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        start = 0
        for job in jobs:
            stop = start + len(job.rows)
            if not job.future.done():
                job.future.set_result((preds[start:stop], None if std is None else std[start:stop]))
            start = stop

    def _run_split(self, rows: np.ndarray) -> Result:
        """The engine on `rows`, in calls of at most `max_batch` rows (worker thread)."""
        parts = []
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start:start + self.max_batch]
            self.on_batch(len(chunk))
            parts.append(self.run(chunk))
        preds = np.concatenate([p for p, _ in parts])
        std = None if parts[0][1] is None else np.concatenate([s for _, s in parts])
        return preds, std
