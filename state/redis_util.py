"""Redis plumbing shared by the state stores: a fail-fast client and a guard that degrades.

Design rule: Redis makes state *shared* between gateway processes; it is never a dependency of a
request. Every Redis-backed store therefore pairs with an in-process twin and a `RedisGuard`: on
any Redis error the call is answered by the twin, and Redis is left alone for ``retry_after_s``
so a dead server costs one failed connect per interval, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.errors import error_text

log = logging.getLogger("hybridgate.state")

T = TypeVar("T")

# A request still holding a Redis lease or budget hold after this long is taken for lost (its settle
# never ran): the stores stop renewing what it holds, which then lapses within its TTL. Longer than
# any upstream call lasts.
MAX_RENEW_S = 3600.0

# What "Redis is not usable right now" looks like from redis-py.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError, ConnectionError)


def make_redis(
    url: str,
    *,
    timeout_s: float = 0.25,
    connect_timeout_s: float = 1.0,
    max_connections: int = 64,
    pool_wait_s: float = 1.0,
) -> aioredis.Redis:
    """A client that fails fast: short timeouts and no client-side retries.

    Why: a request waiting 5 s (redis-py's default) for a breaker check is worse than a request
    using the local breaker state; the guard handles retrying Redis later. The pool *blocks* (up to
    ``pool_wait_s``) when all connections are busy: the default pool raises at once, which under a
    burst of concurrent requests would needlessly push them onto local state. Connecting gets
    longer than a command: a burst opens many connections at once on a busy event loop, and a
    refused connection (Redis down) fails immediately anyway.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        decode_responses=True,
    )
    return aioredis.Redis(connection_pool=pool)


class RedisGuard:
    """Tracks whether Redis is usable and runs calls with an in-process fallback."""

    def __init__(self, name: str, *, retry_after_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._down_until = 0.0
        self.failures = 0  # total Redis failures seen (observability, tests)
        self.degraded = False  # True while answering from the in-process fallback

    def usable(self) -> bool:
        return self._clock() >= self._down_until

    async def run(self, remote: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        """``remote()`` through Redis, or ``local()`` when Redis is down or fails."""
        if self.usable():
            try:
                result = await remote()
            except REDIS_ERRORS as exc:
                self._failed(exc)
            else:
                if self.degraded:
                    log.warning("%s: Redis is back, using shared state again", self.name)
                    self.degraded = False
                return result
        return await local()

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._down_until = self._clock() + self.retry_after_s
        if not self.degraded:
            log.warning("%s: Redis unavailable (%s); using in-process state", self.name,
                        error_text(exc, with_type=True))
        self.degraded = True
