"""Batch a stream's items by readiness, so a burst of upstream chunks leaves in one socket write.

An upstream usually delivers several SSE events in one TCP read. Passed through one by one, each
event costs a trip through the ASGI send chain and a write system call; the profile of the
streaming benchmark showed that path as the largest single cost. Here a pump task reads the
source ahead into a bounded queue and the consumer takes everything that is ready at once: the
first item still leaves as soon as it arrives (time to first token is unchanged), later ones
leave together when they arrived together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def ready_batches(source: AsyncIterator[T], max_items: int = 64, max_queue: int = 256) -> AsyncIterator[list[T]]:
    """Lists of items from `source`, each holding what was ready; re-raises the source's error
    after the items before it. Cancelling the consumer cancels the pump (and so the source)."""
    queue: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue(max_queue)

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put((item, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # delivered to the consumer, in order
            await queue.put((_END, exc))
            return
        await queue.put((_END, None))

    task = asyncio.get_running_loop().create_task(pump())
    try:
        done = False
        while not done:
            item, exc = await queue.get()
            batch: list[T] = []
            while True:
                if item is _END:
                    done = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                if queue.empty() or len(batch) >= max_items:
                    break
                item, exc = queue.get_nowait()
            if batch:
                yield batch
            if done and exc is not None:
                raise exc
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
