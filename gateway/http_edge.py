"""The HTTP edge: limits on what one connection may cost before the app sees a request.

uvicorn's httptools protocol parses whatever arrives and waits as long as a client likes. Here it
gets the limits a public server needs (the ``http:`` settings, `gateway.config.HttpSettings`):

- header size and count: refused with 431 once the head of a request passes ``max_header_bytes``
  (counted as bytes arrive, so a 64 MB header costs the limit, not 64 MB) or ``max_headers``;
- header read timeout: a connection's request head must arrive within ``header_timeout_s`` of
  its first byte (of the connection, for a fresh one): 408, then close; idle sockets that never
  send anything are closed at the same deadline;
- body read timeout: the whole body must arrive within ``body_timeout_s`` of the head, whether
  or not the app reads it (a trickling or endless chunked body is cut off: 408, or a plain close
  when the response has begun);
- keep-alive idle timeout: uvicorn's ``timeout_keep_alive``;
- connection cap: at ``max_connections`` open connections a new one first displaces the
  connection that has waited longest without sending a byte of a request (idle keep-alive or
  never-used sockets, the cheapest kind of attack); when none is idle it is answered with 503
  ``too_many_connections`` and closed.

- malformed HTTP (a garbage request line, a bad Content-Length or chunk size): 400
  ``malformed_http_request``, then close.

Refusals are OpenAI-shaped JSON errors with ``connection: close``. The limits travel inside the
uvicorn config (`EdgeConfig`), so workers started by uvicorn's process manager get them too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import HttpSettings

log = logging.getLogger("hybridgate.edge")


class EdgeConfig(uvicorn.Config):
    """A uvicorn config that carries the edge limits to `EdgeProtocol` (and to spawned workers)."""

    def __init__(self, app: Any, *, limits: HttpSettings, **kwargs: Any) -> None:
        kwargs.setdefault("timeout_keep_alive", limits.keepalive_timeout_s)
        super().__init__(
            app, http=EdgeProtocol, h11_max_incomplete_event_size=limits.max_header_bytes, **kwargs
        )
        self.edge_limits = limits


def _refusal(status: int, reason: bytes, message: str, code: str, retry_after: int | None = None) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error" if status < 500 else "server_error",
                "param": None,
                "code": code,
            }
        }
    )
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, reason),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d\r\n" % retry_after)
    return b"".join(head) + b"\r\n" + body


_TOO_MANY_CONNECTIONS = _refusal(
    503,
    b"Service Unavailable",
    "The server has too many open connections; retry shortly.",
    "too_many_connections",
    retry_after=1,
)
_HEADER_TIMEOUT = _refusal(
    408, b"Request Timeout", "The request headers did not arrive in time.", "request_timeout"
)
_BODY_TIMEOUT = _refusal(
    408, b"Request Timeout", "The request body did not arrive in time.", "request_timeout"
)
_HEADERS_TOO_LARGE = _refusal(
    431,
    b"Request Header Fields Too Large",
    "The request headers are too large.",
    "request_header_fields_too_large",
)
_MALFORMED = _refusal(
    400,
    b"Bad Request",
    "The request is not valid HTTP/1.1 (its request line, a header or the body's framing could not be parsed).",
    "malformed_http_request",
)
_TOO_MANY_HEADERS = _refusal(
    431,
    b"Request Header Fields Too Large",
    "The request has too many headers.",
    "request_header_fields_too_large",
)


_LINGER_S = 2.0


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits: HttpSettings = getattr(config, "edge_limits", None) or HttpSettings()
        self._in_head = True  # reading a request head (or waiting for one)
        self._head_bytes = 0
        self._header_count = 0
        self._refusal: bytes | None = None
        self._idle_since: float | None = None  # waiting for a request, not a byte of it yet
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._displace_idle():
            log.warning("edge: %d connections open, refusing a new one", len(self.connections))
            transport.write(_TOO_MANY_CONNECTIONS)
            transport.close()
            self.transport = transport
            self._refusal = _TOO_MANY_CONNECTIONS
            return
        super().connection_made(transport)
        self._idle_since = time.monotonic()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def _displace_idle(self) -> bool:
        """Close the connection that has been idle longest; False when none is idle."""
        oldest: EdgeProtocol | None = None
        for c in self.connections:
            since = getattr(c, "_idle_since", None)
            if since is not None and (oldest is None or since < oldest._idle_since):  # type: ignore[operator]
                oldest = c
        if oldest is None:
            return False
        oldest._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._idle_since = None
        if self._refusal is _TOO_MANY_CONNECTIONS:
            return  # never joined the server's connections
        super().connection_lost(exc)

    def _close(self) -> None:
        self._idle_since = None
        self.connections.discard(self)
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_timers(self) -> None:
        for t in (self._head_timer, self._body_timer):
            if t is not None:
                t.cancel()
        self._head_timer = self._body_timer = None

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` unless the app already began one, then close the connection."""
        self._refusal = response
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self._close()  # mid-response: nothing more can be said
            return
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's reads end, its writes are dropped
            cycle.message_event.set()
        self._idle_since = None
        self.connections.discard(self)
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(response)
        # Lingering close: a client still sending would get a reset that can destroy the answer
        # before it reads it; so stop writing, drop what still arrives, and close a moment later.
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(_LINGER_S, transport.close)
        else:
            transport.close()

    # -- reading -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        self._idle_since = None
        head_before = self._in_head
        super().data_received(data)
        if self._refusal is not None:
            self._refuse(self._refusal)
            return
        if head_before and self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(_HEADERS_TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        """The parser's "invalid HTTP" answer: JSON in the API's error shape instead of uvicorn's
        plain text (SDKs parse the body of every error), sent by `data_received` once the parser
        returns."""
        if self._refusal is None:
            self._refusal = _MALFORMED

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def on_url(self, url: bytes) -> None:
        if self._refusal is None:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refusal is not None:
            return
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = _TOO_MANY_HEADERS  # acted on when the parser returns
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refusal is not None:
            return
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._refusal is None:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # now waiting for the next request
            self._idle_since = time.monotonic()

    # -- timeouts ----------------------------------------------------------------------------

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._refusal is not None or self.transport.is_closing():
            return
        if self._head_bytes == 0 and self._idle_since is not None:
            self._close()  # never sent a byte: nobody to answer
        else:
            self._refuse(_HEADER_TIMEOUT)

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self._refusal is None and not self.transport.is_closing():
            self._refuse(_BODY_TIMEOUT)


def fit_open_file_limit(limits: HttpSettings, reserve: int = 128) -> HttpSettings:
    """Raise this process's soft open-file limit towards what ``max_connections`` needs (up to the
    hard limit), and lower the cap when the limit cannot hold it plus ``reserve`` descriptors for
    the database, Redis, upstream connections and files: past the limit, accept() fails and a
    legitimate client gets nothing at all instead of a clear 503."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limits.max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        cap = max(1, soft - reserve)
        log.warning(
            "edge: open-file limit %d holds %d connections, not the configured %d",
            soft,
            cap,
            limits.max_connections,
        )
        return limits.model_copy(update={"max_connections": cap})
    return limits
