"""Bandit statistics shared by every gateway process (Redis), or kept in this process.

A bandit learns from feedback that may arrive at any process, so its per-arm statistics must be
shared. They are stored as additive totals — pseudo-counts and reward sums — because sums can be
updated atomically with HINCRBYFLOAT from any number of processes without a read-modify-write race;
each process then rebuilds its posterior from the totals (`router.plugins.ThompsonBandit.load_totals`).
"""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis

from state.redis_util import RedisGuard

FIELDS = ("alpha", "beta", "n", "sum", "sumsq")
ArmTotals = dict[str, float]  # FIELDS -> value, added up over every observed reward


def totals_of(reward: float) -> ArmTotals:
    """What one reward in [0, 1] adds (Beta pseudo-counts, count and moments)."""
    q = min(max(float(reward), 0.0), 1.0)
    return {"alpha": q, "beta": 1.0 - q, "n": 1.0, "sum": q, "sumsq": q * q}


class BanditStore(Protocol):
    async def add(self, bandit: str, arm: str, reward: float) -> None: ...

    async def load(self, bandit: str) -> dict[str, ArmTotals] | None:
        """Every arm's totals, or None when there is no shared view (keep the local state)."""
        ...


class InProcessBanditStore:
    """No sharing: each process's bandit keeps its own statistics."""

    async def add(self, bandit: str, arm: str, reward: float) -> None:
        return None

    async def load(self, bandit: str) -> dict[str, ArmTotals] | None:
        return None


class RedisBanditStore:
    """Totals in one Redis hash per bandit (field ``<arm>|<stat>``); Redis trouble = local only."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "hg:") -> None:
        self._r = client
        self._prefix = prefix
        self._guard = RedisGuard("bandits")

    def _key(self, bandit: str) -> str:
        return f"{self._prefix}bandit:{bandit}"

    async def add(self, bandit: str, arm: str, reward: float) -> None:
        async def remote() -> None:
            pipe = self._r.pipeline(transaction=True)
            for stat, v in totals_of(reward).items():
                pipe.hincrbyfloat(self._key(bandit), f"{arm}|{stat}", v)
            await pipe.execute()

        async def local() -> None:
            return None

        await self._guard.run(remote, local)

    async def load(self, bandit: str) -> dict[str, ArmTotals] | None:
        async def remote() -> dict[str, ArmTotals] | None:
            raw = await self._r.hgetall(self._key(bandit))
            out: dict[str, ArmTotals] = {}
            for field, value in raw.items():
                arm, _, stat = str(field).rpartition("|")
                if stat in FIELDS:
                    out.setdefault(arm, {})[stat] = float(value)
            return out

        async def local() -> dict[str, ArmTotals] | None:
            return None

        return await self._guard.run(remote, local)
