"""ready_batches keeps order, delivers an error after the items before it, and stops its pump."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.coalesce import ready_batches


async def _burst_then_pause(log: list[str]) -> AsyncIterator[int]:
    try:
        for i in range(3):
            yield i  # a burst: all ready at once
        await asyncio.sleep(0.05)
        for i in range(3, 5):
            yield i
    finally:
        log.append("closed")


async def test_items_that_arrive_together_leave_together_in_order() -> None:
    log: list[str] = []
    batches = [b async for b in ready_batches(_burst_then_pause(log))]
    assert [x for b in batches for x in b] == [0, 1, 2, 3, 4]
    assert batches[0] == [0, 1, 2] and len(batches) == 2
    assert log == ["closed"]


async def _fails_after_two() -> AsyncIterator[int]:
    yield 1
    yield 2
    raise ValueError("cut")


async def test_source_error_follows_the_items_before_it() -> None:
    got: list[int] = []
    with pytest.raises(ValueError, match="cut"):
        async for b in ready_batches(_fails_after_two()):
            got.extend(b)
    assert got == [1, 2]


async def test_consumer_leaving_early_cancels_the_source() -> None:
    log: list[str] = []

    async def endless() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                await asyncio.sleep(0.001)
                yield i
                i += 1
        finally:
            log.append("closed")

    agen = ready_batches(endless())
    first = await agen.__anext__()
    await agen.aclose()
    await asyncio.sleep(0.01)
    assert first and log == ["closed"]
