"""An asyncio micro-batcher: concurrent requests share one model call.

``await batcher.submit(item)`` queues an item; one worker takes whatever is queued (up to
``max_batch``), waits at most ``max_wait`` seconds for more while the batch is not full, runs
``fn(items)`` in its own thread (the event loop keeps accepting requests) and hands each caller
its own result. An exception in ``fn`` goes to every caller of that batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class MicroBatcher:
    """Batches ``submit`` calls into ``fn(list of items) -> list of results``."""

    def __init__(
        self, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int = 64, max_wait: float = 0.002
    ) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medmodal-batch")
        self.batches = 0
        self.items = 0

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:  # first call, or a new event loop
            if self._task is not None:
                self._task.cancel()
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._run())
        fut: asyncio.Future[Any] = loop.create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _collect(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(
                    self._pool, self.fn, [item for item, _ in live]
                )
            except Exception as exc:  # every caller of the batch gets the error
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(live)
            for (_, fut), res in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
