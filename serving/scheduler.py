"""The replica's decoding loop: requests queue up while a batch decodes; the next batch takes every waiting
request (up to `max_batch_size`) and steps them together, one steered step per token for the whole batch.

Why not @serve.batch: it forms a new batch every `batch_wait_timeout_s` while the previous one still runs, and
the new ones wait behind it; a generation batch runs for tens of steps, so under steady load the arrivals were
cut into batches of 1-7 (bench/serve.py, 16 clients) and throughput stopped growing with clients. Here one
loop owns the engine, so nothing else competes for the replica's torch thread either.
"""
from __future__ import annotations

import asyncio
from typing import Any

from serving.engine import DecodeJob, Engine


class DecodeLoop:
    def __init__(self, engine: Engine, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005):
        self.engine, self.max_batch_size, self.wait_s = engine, max_batch_size, batch_wait_timeout_s
        self.waiting: list[tuple[DecodeJob, asyncio.Queue]] = []
        self.batch_sizes: list[int] = []  # of every batch run (what the tests and the bench read)
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def submit(self, job: DecodeJob) -> asyncio.Queue:
        """Queue `job`; its TokenEvents (then, if decoding failed, the exception) arrive on the returned queue."""
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        queue: asyncio.Queue = asyncio.Queue()
        self.waiting.append((job, queue))
        self._wakeup.set()
        return queue

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if self.wait_s:
                await asyncio.sleep(self.wait_s)  # a burst of requests arrives over a few milliseconds
            taken, self.waiting = self.waiting[: self.max_batch_size], self.waiting[self.max_batch_size:]
            if not self.waiting:
                self._wakeup.clear()
            if taken:
                await self._decode(taken)

    async def _decode(self, taken: list[tuple[DecodeJob, asyncio.Queue]]) -> None:
        self.batch_sizes.append(len(taken))
        try:
            batch = self.engine.start([job for job, _ in taken])
            while not batch.done:
                events = await asyncio.to_thread(batch.step)  # the loop stays free to take new requests
                for (_, queue), event in zip(taken, events):
                    if event is not None:
                        queue.put_nowait(event)
        except Exception as err:  # noqa: BLE001 - every request of the batch is told; the loop goes on
            for _, queue in taken:
                queue.put_nowait(err)

    async def events(self, job: DecodeJob):
        """The job's TokenEvents as they are decoded, in lists of those ready together (a stream that falls
        behind sends several tokens in one message)."""
        queue = self.submit(job)
        while True:
            ready: list[Any] = [await queue.get()]
            while not queue.empty():
                ready.append(queue.get_nowait())
            for item in ready:
                if isinstance(item, BaseException):
                    raise item
            yield ready
            if ready[-1].finish_reason is not None:
                return

    async def collect(self, job: DecodeJob) -> list:
        return [event async for ready in self.events(job) for event in ready]
