"""Redis helpers: delete a test's keys, a settable clock for TTL and window logic."""

from __future__ import annotations

import redis.asyncio as aioredis


async def delete_keys(url: str, prefix: str) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in r.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


class Clock:
    def __init__(self, t: float = 1_715_774_400.0) -> None:  # 2024-05-15 12:00 UTC
        self.t = t

    def __call__(self) -> float:
        return self.t
