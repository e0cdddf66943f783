"""Bandit statistics shared by every gateway process: in Redis, in the database, or kept local.

A bandit learns from feedback that may arrive at any process, so its per-arm statistics must be
shared. They are stored as additive totals (statistic name -> sum, e.g. Beta pseudo-counts, or
LinUCB's ``x xᵀ`` and ``r·x``) because sums can be added atomically from any number of processes
without a read-modify-write race: HINCRBYFLOAT in Redis, ``ON CONFLICT DO UPDATE SET value =
value + excluded.value`` in SQL. Each process then rebuilds its bandit from the totals
(`router.protocols.SharedBandit.load_totals`).

Without Redis the database is the shared store, so several processes (``workers > 1``) still
learn together. Trouble with either store keeps the process on its own state for the moment;
the feedback rows themselves are in the request log, so nothing a bandit could learn is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from requestlog.tables import bandit_totals
from state.redis_util import RedisGuard

log = logging.getLogger(__name__)

ArmTotals = dict[str, float]  # statistic name -> sum over every observed reward

DB_ERRORS = (OSError, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DBAPIError)


class BanditStore(Protocol):
    async def add(self, bandit: str, arm: str, increments: Mapping[str, float]) -> None: ...

    async def load(self, bandit: str) -> dict[str, ArmTotals] | None:
        """Every arm's totals, or None when there is no shared view (keep the local state)."""
        ...


class InProcessBanditStore:
    """No sharing: each process's bandit keeps its own statistics."""

    async def add(self, bandit: str, arm: str, increments: Mapping[str, float]) -> None:
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

    async def add(self, bandit: str, arm: str, increments: Mapping[str, float]) -> None:
        async def remote() -> None:
            pipe = self._r.pipeline(transaction=True)
            for stat, v in increments.items():
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
                if arm:
                    out.setdefault(arm, {})[stat] = float(value)
            return out

        async def local() -> dict[str, ArmTotals] | None:
            return None

        return await self._guard.run(remote, local)


class DbBanditStore:
    """Totals as rows ``(bandit, arm, stat) -> value`` of the log database, added by upsert.

    One statement per feedback (its rows are one arm's increments) and one indexed read per bandit
    per sync interval: small next to the request log the same database already takes.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        ins = dialect.insert(bandit_totals)
        self._upsert = ins.on_conflict_do_update(
            index_elements=["bandit", "arm", "stat"],
            set_={"value": bandit_totals.c.value + ins.excluded.value},
        )
        self._degraded = False

    async def add(self, bandit: str, arm: str, increments: Mapping[str, float]) -> None:
        rows = [{"bandit": bandit, "arm": arm, "stat": k, "value": float(v)} for k, v in increments.items()]
        if not rows:
            return
        try:
            async with self._engine.begin() as conn:
                await conn.execute(self._upsert, rows)
        except DB_ERRORS as exc:
            self._trouble(exc)
        else:
            self._degraded = False

    async def load(self, bandit: str) -> dict[str, ArmTotals] | None:
        q = sa.select(bandit_totals.c.arm, bandit_totals.c.stat, bandit_totals.c.value).where(
            bandit_totals.c.bandit == bandit)
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(q)).all()
        except DB_ERRORS as exc:
            self._trouble(exc)
            return None
        self._degraded = False
        out: dict[str, ArmTotals] = {}
        for arm, stat, value in rows:
            out.setdefault(arm, {})[stat] = float(value)
        return out

    def _trouble(self, exc: BaseException) -> None:
        if not self._degraded:
            log.warning("bandits: database unavailable (%s: %s); learning locally until it returns",
                        type(exc).__name__, exc)
        self._degraded = True
