"""Helpers for the request-log tests: row factories, a cuttable TCP proxy, DB queries."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from requestlog.rows import AttemptRow, RequestRow
from tests.support.net import free_port

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_request(rid: str, n_attempts: int = 1, **kw: Any) -> tuple[RequestRow, list[AttemptRow]]:
    """A realistic request row with ``n_attempts`` attempts (the last one succeeded)."""
    fields: dict[str, Any] = dict(
        id=rid,
        created_at=T0,
        endpoint="chat",
        api_key_id="key-1",
        user="alice",
        team="research",
        requested_model="auto",
        served_model="gpt-4o-mini",
        provider="openai",
        deployment="openai-mini",
        policy="default",
        policy_version=3,
        route_reason="cheapest under latency slo",
        propensity=0.25,
        prompt_tokens=12,
        completion_tokens=34,
        cost_usd=0.000123,
        latency_ms=456.5,
        ttft_ms=120.25,
        streamed=True,
        attempts_count=n_attempts,
        prompt_hash="abc123",
        metadata={"tags": ["a", "b"], "nested": {"k": 1.5}, "unicode": "héllo ✓"},
    )
    fields.update(kw)
    request = RequestRow(**fields)
    attempts = [
        AttemptRow(
            id=f"{rid}-{n}",
            request_id=rid,
            attempt_no=n,
            deployment="openai-mini" if n == n_attempts - 1 else f"backup-{n}",
            provider="openai",
            upstream_model="gpt-4o-mini-2024",
            started_at=T0 + timedelta(milliseconds=10 * n),
            latency_ms=100.0 + n,
            status="ok" if n == n_attempts - 1 else "error",
            http_status=200 if n == n_attempts - 1 else 503,
            error_type=None if n == n_attempts - 1 else "upstream_unavailable",
            prompt_tokens=12,
            completion_tokens=34 if n == n_attempts - 1 else None,
            cost_usd=0.000123 if n == n_attempts - 1 else None,
        )
        for n in range(n_attempts)
    ]
    return request, attempts



def dead_pg_url() -> str:
    """A Postgres URL where nothing listens (connections are refused at once)."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"


async def fetch(url: str, sql: str | sa.Executable, **params: Any) -> list[sa.Row[Any]]:
    """Rows of a query; pass a Core select (not text) to get typed values on SQLite too."""
    engine = create_async_engine(url)
    stmt = sa.text(sql) if isinstance(sql, str) else sql
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(stmt, params)).all())
    finally:
        await engine.dispose()


async def scalar(url: str, sql: str, **params: Any) -> Any:
    rows = await fetch(url, sql, **params)
    return rows[0][0]


class TcpProxy:
    """A TCP forwarder that can be cut (listener closed, every connection aborted) and restored
    on the same port, to simulate the database vanishing from the network; or frozen (``frozen =
    True``): connections, old and new, stay open but bytes are swallowed both ways, as when a peer
    hangs or vanishes and TCP has not noticed yet (the nastier outage: nothing fails, nothing answers);
    or deaf (``replies_dropped = True``): what the client sends still reaches the server, but its
    answers are swallowed, as when a connection dies after the server acted but before its reply
    arrived (the client cannot tell whether its command ran)."""

    frozen = False
    replies_dropped = False

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections_seen = 0
        self._generation = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        generation = self._generation
        self._transports.add(writer.transport)  # a cut from now on aborts it
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._transports.discard(writer.transport)
            return
        if generation != self._generation:  # cut while we were connecting upstream
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.connections_seen += 1
        pair = (writer.transport, up_writer.transport)
        self._transports.update(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer, reply=True))
        finally:
            self._transports.difference_update(pair)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                if not self.frozen and not (reply and self.replies_dropped):
                    writer.write(data)
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def cut(self) -> None:
        assert self._server is not None
        self._generation += 1
        self._server.close()
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        if self._server is not None:
            await self.cut()


class ThreadedProxy:
    """`TcpProxy` on its own loop in a thread, so blocking calls into a gateway (a `GatewayThread` starting,
    a synchronous HTTP client) never stall it."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = TcpProxy(target_host, target_port)
        self._run(self.proxy.start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def url(self, database: str) -> str:
        return self.proxy.url(database)

    @property
    def frozen(self) -> bool:
        return self.proxy.frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self.proxy.frozen = value  # read by the proxy's pipes on their next chunk

    async def cut(self) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.proxy.cut(), self.loop))

    async def restore(self) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.proxy.restore(), self.loop))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
