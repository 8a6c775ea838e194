"""Dynamic batching: requests that arrive within ``max_wait_ms`` of each other share one forward pass.

Requests with the same input shape (single texts or pairs) and model snapshot are grouped, whatever tasks
each asks: a group is run once, up to ``max_batch`` inputs, in a worker thread so the event loop keeps
answering — the trunk once for all rows, to the deepest split any of them needs, then each task's branch
only on the rows that asked for it. When a group fails, its requests are run again one by one, so only a
request that fails on its own gets the error.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class Job:
    texts: list[str]
    pairs: Optional[list[str]]
    tasks: list[str]
    snapshot: Any  # the model version the request was validated against; it is also run with it
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple:
        return (self.pairs is not None, id(self.snapshot))


class MicroBatcher:
    def __init__(self, run: Callable[..., list[dict]], max_batch: int = 32,
                 max_wait_ms: float = 5.0, on_batch: Optional[Callable[[int], None]] = None):
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manytask-model")
        self._worker: Optional[asyncio.Task] = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self.executor.shutdown(wait=False)

    async def submit(self, texts: list[str], pairs: Optional[list[str]], tasks: list[str], snapshot: Any = None) -> list[dict]:
        self.start()
        job = Job(texts, pairs, tasks, snapshot, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _collect(self) -> list[Job]:
        jobs = [await self.queue.get()]
        size = len(jobs[0].texts)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                job = await asyncio.wait_for(self.queue.get(), remaining)
            except asyncio.TimeoutError:
                break
            jobs.append(job)
            size += len(job.texts)
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[Job]] = {}
            for j in jobs:
                groups.setdefault(j.key, []).append(j)
            for group in groups.values():
                await self._run_group(loop, group)

    async def _run_group(self, loop, group: list[Job]) -> None:
        try:
            results = await self._run(loop, group)
        except Exception as e:
            if len(group) == 1:
                if not group[0].future.done():
                    group[0].future.set_exception(e)
                return
            for job in group:  # isolate the failure: each request alone
                await self._run_group(loop, [job])
            return
        start = 0
        for j in group:
            if not j.future.done():
                j.future.set_result(results[start: start + len(j.texts)])
            start += len(j.texts)

    async def _run(self, loop, group: list[Job]) -> list[dict]:
        texts = [t for j in group for t in j.texts]
        pairs = [p for j in group for p in j.pairs] if group[0].pairs is not None else None
        tasks = list(dict.fromkeys(t for j in group for t in j.tasks))
        rows: dict[str, list[int]] = {t: [] for t in tasks}
        start = 0
        for j in group:
            for t in j.tasks:
                rows[t].extend(range(start, start + len(j.texts)))
            start += len(j.texts)
        results = await loop.run_in_executor(self.executor, self.run, texts, pairs, tasks, group[0].snapshot, rows)
        if self.on_batch:
            self.on_batch(len(texts))
        return results
