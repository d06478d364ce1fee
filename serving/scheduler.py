"""The replica's decoding loop: one running batch (serving/engine.py) that requests join between steps and
leave when they finish, so every step advances every request in flight by one steered token.

Why not @serve.batch: it forms a new batch every `batch_wait_timeout_s` while the previous one still runs, and
the new ones wait behind it; a generation runs for tens of steps, so under steady load the arrivals were cut
into batches of 1-7 (bench/serve.py, 16 clients) and throughput stopped growing with clients. Static batches
formed from everything waiting did better, but settled into two halves taking turns. Here one loop owns the
engine, so nothing else competes for the replica's torch thread either.
"""
from __future__ import annotations

import asyncio
from typing import Any

from serving.engine import DecodeJob, Engine


class DecodeLoop:
    def __init__(self, engine: Engine, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005):
        self.engine, self.max_batch_size, self.wait_s = engine, max_batch_size, batch_wait_timeout_s
        self.waiting: list[tuple[DecodeJob, asyncio.Queue]] = []
        self.steps = 0  # decoding steps run, and the rows they advanced (mean batch = rows / steps)
        self.rows = 0
        self._queues: dict[int, asyncio.Queue] = {}
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

    def _admit(self, batch) -> None:
        for job in [job for job, _ in self.waiting if job.cancelled] + [j for j in batch.pending if j.cancelled]:
            self._queues.pop(id(job), None)
        self.waiting = [(job, queue) for job, queue in self.waiting if not job.cancelled]
        room = self.max_batch_size - batch.size
        taken, self.waiting = self.waiting[:max(room, 0)], self.waiting[max(room, 0):]
        for job, queue in taken:
            self._queues[id(job)] = queue
        batch.admit([job for job, _ in taken])

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if self.wait_s:
                await asyncio.sleep(self.wait_s)  # when idle, a burst of requests arrives over a few milliseconds
            self._wakeup.clear()
            batch = self.engine.start()
            self._admit(batch)
            try:
                while not batch.done:
                    events = await asyncio.to_thread(batch.step)  # the loop stays free to take new requests
                    self.steps, self.rows = self.steps + 1, self.rows + len(events)
                    for job, event in events:
                        queue = self._queues.get(id(job))
                        if queue is not None:
                            queue.put_nowait(event)
                        if event.finish_reason is not None or job.cancelled:
                            self._queues.pop(id(job), None)
                    self._admit(batch)
            except Exception as err:  # noqa: BLE001 - every request in the batch is told; the loop goes on
                for queue in self._queues.values():
                    queue.put_nowait(err)
                self._queues.clear()
            if self.waiting:
                self._wakeup.set()

    async def events(self, job: DecodeJob):
        """The job's TokenEvents as they are decoded, in lists of those ready together (a stream that falls
        behind sends several tokens in one message)."""
        queue = self.submit(job)
        try:
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
        finally:
            job.cancelled = True  # a no-op when it finished; frees its batch slot when the reader went away

    async def collect(self, job: DecodeJob) -> list:
        return [event async for ready in self.events(job) for event in ready]
