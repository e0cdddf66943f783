"""Output delivery: the engine thread's events reach their consumers (asyncio streams, blocking streams).

The engine thread appends each step's events (`Delta`, `Finished`, `Failed`: tokens already detokenised
and checked against stop rules by `Sequence.append`) to an `OutputDelivery`, and flushes once per step:
events for blocking consumers go into their `queue.SimpleQueue`; events for asyncio consumers are grouped
per event loop and delivered with one ``call_soon_threadsafe`` per loop, so a loop is woken once per step,
not once per token. A consumer iterates its `RequestStream` / `SyncRequestStream` for deltas.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .sampler import TokenLogprob
from .sequence import Delta, Event, Finished, Request, Usage

if TYPE_CHECKING:
    from .engine import Engine


class AsyncSink:
    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()


class SyncSink:
    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Event] = queue.SimpleQueue()


@dataclass
class ChoiceResult:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None
    stop_reason: str | int | None = None  # as `Delta.stop_reason`
    prompt_logprobs: list[TokenLogprob | None] | None = None  # as `Delta.prompt_logprobs`


@dataclass
class GenerationResult:
    request_id: str
    choices: list[ChoiceResult]
    usage: Usage


class _Collector:
    """Accumulates deltas into per-choice results."""

    def __init__(self, request_id: str, n: int, logprobs: bool) -> None:
        self.request_id = request_id
        self.choices = [ChoiceResult(i, [], "", None, [] if logprobs else None) for i in range(n)]

    def add(self, d: Delta) -> None:
        c = self.choices[d.index]
        c.token_ids.extend(d.token_ids)
        c.text += d.text
        if d.logprobs and c.logprobs is not None:
            c.logprobs.extend(d.logprobs)
        if d.prompt_logprobs is not None:
            c.prompt_logprobs = d.prompt_logprobs
        if d.finish_reason:
            c.finish_reason = d.finish_reason
            c.stop_reason = d.stop_reason

    def result(self, usage: Usage) -> GenerationResult:
        return GenerationResult(self.request_id, self.choices, usage)


class RequestStream:
    """Handle of an asyncio consumer: ``async for delta in stream``; `usage` is set at the end."""

    def __init__(self, engine: Engine, request: Request, sink: AsyncSink) -> None:
        self.engine = engine
        self.request_id = request.request_id
        self.params = request.params
        self.prompt_len = len(request.prompt_ids)
        self._sink = sink
        self.usage: Usage | None = None
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[Delta]:
        while not self.finished:
            ev = await self._sink.queue.get()
            if isinstance(ev, Delta):
                yield ev
            elif isinstance(ev, Finished):
                self.usage = ev.usage
                self.finished = True
            else:
                self.finished = True
                raise ev.error

    def cancel(self) -> None:
        if not self.finished:
            self.engine.cancel(self.request_id)

    async def result(self) -> GenerationResult:
        """Wait for the end; the accumulated choices (call once, instead of iterating)."""
        col = _Collector(self.request_id, self.params.n, self.params.logprobs)
        try:
            async for d in self:
                col.add(d)
        finally:
            self.cancel()
        assert self.usage is not None
        return col.result(self.usage)


class SyncRequestStream:
    """Handle of a blocking consumer (tests, benchmarks, CLI)."""

    def __init__(self, engine: Engine, request: Request, sink: SyncSink) -> None:
        self.engine = engine
        self.request_id = request.request_id
        self.params = request.params
        self._sink = sink
        self.usage: Usage | None = None
        self.finished = False
        self._result: GenerationResult | None = None

    def __iter__(self) -> Iterator[Delta]:
        while not self.finished:
            ev = self._sink.queue.get()
            if isinstance(ev, Delta):
                yield ev
            elif isinstance(ev, Finished):
                self.usage = ev.usage
                self.finished = True
            else:
                self.finished = True
                raise ev.error

    def cancel(self) -> None:
        if not self.finished:
            self.engine.cancel(self.request_id)

    def result(self) -> GenerationResult:
        """Block until the end; the accumulated choices (cached: safe to call again)."""
        if self._result is None:
            col = _Collector(self.request_id, self.params.n, self.params.logprobs)
            for d in self:
                col.add(d)
            assert self.usage is not None
            self._result = col.result(self.usage)
        return self._result


class OutputDelivery:
    """This step's events, delivered together by `flush` (engine thread only)."""

    def __init__(self) -> None:
        self._outbox: list[tuple[Any, Event]] = []

    def emit(self, sink: Any, event: Event) -> None:
        self._outbox.append((sink, event))

    def clear(self) -> None:
        self._outbox = []

    def flush(self) -> list[asyncio.AbstractEventLoop]:
        """Deliver the events; returns the consumer loops that are gone (their requests should be ended)."""
        if not self._outbox:
            return []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Event], Event]]] = {}
        for sink, event in self._outbox:
            if isinstance(sink, AsyncSink):
                by_loop.setdefault(sink.loop, []).append((sink.queue, event))
            else:
                sink.queue.put(event)
        self._outbox = []
        dead = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the consumer's loop is gone: nobody will read
                dead.append(loop)
        return dead


def _deliver(items: list[tuple[asyncio.Queue[Event], Event]]) -> None:
    for q, event in items:
        q.put_nowait(event)
