"""The HTTP edge under slow and idle clients (gateway/http_edge.py), against a real gateway.

Short timeouts in the test config keep this fast; the counts are those of the attack the limits
were written for: 1,000 idle sockets, 100 partial headers, 100 endless chunked bodies and 64 MB
headers, with a legitimate request served quickly while they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import statistics
import time
from pathlib import Path

import httpx
import orjson

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import gateway_settings
from tests.support.harness import running_gateway

HTTP = {
    "header_timeout_s": 2.0,
    "body_timeout_s": 2.5,
    "keepalive_timeout_s": 1.0,
    "max_header_bytes": 16384,
    "max_headers": 50,
    "max_connections": 1500,
}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


def _raise_open_file_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard)
        )


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, or None when it kept the connection open."""
    try:
        return await asyncio.wait_for(reader.read(-1), seconds)
    except TimeoutError:
        return None
    except ConnectionError:
        return b""


async def _trickle(writer: asyncio.StreamWriter, head: bytes, piece: bytes, every_s: float) -> None:
    """Send ``head``, then ``piece`` every ``every_s`` until the server hangs up."""
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(head)
        await writer.drain()
        while not writer.is_closing():
            await asyncio.sleep(every_s)
            writer.write(piece)
            await writer.drain()


async def _huge_header(port: int) -> bytes:
    """Send a 64 MB header; return what came back (the server cuts it off at its limit)."""
    reader, writer = await _connect(port)
    chunk = b"a" * (1 << 20)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-big: ")
        for _ in range(64):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    got = await _closed_within(reader, 5)
    writer.close()
    return got or b""


async def _legit_request(port: int) -> float:
    """Seconds for one chat completion on a new connection (raw HTTP/1.1: little client CPU)."""
    body = orjson.dumps(CHAT)
    t0 = time.perf_counter()
    reader, writer = await _connect(port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )
    got = await asyncio.wait_for(reader.read(-1), 5)
    took = time.perf_counter() - t0
    writer.close()
    assert got.startswith(b"HTTP/1.1 200"), got[:300]
    assert orjson.loads(got.split(b"\r\n\r\n", 1)[1])["choices"]
    return took


async def test_slow_and_idle_clients_are_cut_off_while_a_real_request_is_served_fast(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    _raise_open_file_limit(8192)  # the attack and the gateway share this process's descriptors
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, http=HTTP)) as gw:
        port = gw.port
        await _legit_request(port)  # warm the path once
        idle = await asyncio.gather(*(_connect(port) for _ in range(1000)))
        t_attack = time.monotonic()
        partial_head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
        chunked_head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n"
            b"content-type: application/json\r\n\r\n"
        )
        partial = await asyncio.gather(*(_connect(port) for _ in range(100)))
        trickles = [asyncio.create_task(_trickle(w, partial_head, b"x", 0.1)) for _, w in partial]
        chunked = await asyncio.gather(*(_connect(port) for _ in range(100)))
        trickles += [asyncio.create_task(_trickle(w, chunked_head, b"1\r\n \r\n", 0.05)) for _, w in chunked]
        huge = [asyncio.create_task(_huge_header(port)) for _ in range(4)]

        for got in await asyncio.gather(*huge):
            assert got == b"" or got.startswith(b"HTTP/1.1 431"), got[:100]  # refused, or reset mid-send

        took = []
        for _ in range(5):  # the attack still runs: every slow and idle connection is still open
            assert not any(t.done() for t in trickles)
            took.append(await _legit_request(port))
        assert statistics.median(took) < 0.1, took

        # Everything is cut off by the configured deadlines (2 s head, 2.5 s body), with margin for a busy host.
        left = max(0.1, t_attack + 6.0 - time.monotonic())
        idle_got = await asyncio.gather(*(_closed_within(r, left) for r, _ in idle))
        assert all(g is not None for g in idle_got), sum(g is None for g in idle_got)
        assert all(g == b"" for g in idle_got)  # never sent a byte: closed without an answer
        for group in (partial, chunked):
            got = await asyncio.gather(
                *(_closed_within(r, max(0.1, t_attack + 6.0 - time.monotonic())) for r, _ in group)
            )
            assert all(g is not None for g in got), sum(g is None for g in got)
            answered = [g for g in got if g]
            assert answered and all(g.startswith(b"HTTP/1.1 408") for g in answered)
            assert orjson.loads(answered[0].split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        for t in trickles:
            t.cancel()
        await asyncio.gather(*trickles, return_exceptions=True)
        for _, w in idle + partial + chunked:
            w.close()

        # Header count, and the keep-alive idle timeout.
        r = httpx.get(gw.base_url + "/healthz", headers={f"x-h{i}": "1" for i in range(60)})
        assert r.status_code == 431 and r.json()["error"]["code"] == "request_header_fields_too_large"
        reader, writer = await _connect(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
        assert first.startswith(b"HTTP/1.1 200")
        assert await _closed_within(reader, 3.0) == b""  # closed after ~1 s idle
        writer.close()


async def test_connection_cap_displaces_idle_sockets_and_refuses_clearly_when_none_is_idle(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    http = HTTP | {"max_connections": 20, "header_timeout_s": 5.0}
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, http=http)) as gw:
        idle = await asyncio.gather(*(_connect(gw.port) for _ in range(20)))
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=5) as client:
            assert (await client.get("/healthz")).status_code == 200  # an idle socket made room
        assert await _closed_within(idle[0][0], 1.0) == b""  # the oldest idle one
        for _, w in idle:
            w.close()
        await asyncio.sleep(0.1)

        busy = await asyncio.gather(*(_connect(gw.port) for _ in range(20)))
        for _, w in busy:  # each has begun a request: none is idle
            w.write(b"GET /healthz HTTP/1.1\r\n")
        await asyncio.sleep(0.2)
        reader, writer = await _connect(gw.port)
        got = await _closed_within(reader, 2.0)
        assert got is not None and got.startswith(b"HTTP/1.1 503"), got
        head, body = got.split(b"\r\n\r\n", 1)
        assert b"retry-after: 1" in head and orjson.loads(body)["error"]["code"] == "too_many_connections"
        for _, w in [*busy, (reader, writer)]:
            w.close()


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await _connect(port)
    writer.write(request)
    await writer.drain()
    got = await _closed_within(reader, 5)
    writer.close()
    return got or b""


async def test_malformed_http_gets_a_json_400_in_the_api_error_shape(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    malformed = [
        b"\x16\x03\x01garbage\r\n\r\n",  # TLS to a plain port
        b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\ncontent-length: abc\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/messages HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n{}",
    ]
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, http=HTTP)) as gw:
        for request in malformed:
            got = await _raw(gw.port, request)
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), (request, got[:200])
            assert b"content-type: application/json" in head.lower()
            error = orjson.loads(body)["error"]
            assert error["code"] == "malformed_http_request"
            assert error["type"] == "invalid_request_error"
        await _legit_request(gw.port)  # the server is unharmed
