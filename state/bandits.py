"""Bandit statistics shared by every gateway process: in Redis, in the database, or kept local.

A bandit learns from feedback that may arrive at any process, so its per-arm statistics must be
shared. They are stored as additive totals (statistic name -> sum, e.g. Beta pseudo-counts, or
LinUCB's ``x xᵀ`` and ``r·x``) because sums can be added atomically from any number of processes
without a read-modify-write race: HINCRBYFLOAT in Redis, ``ON CONFLICT DO UPDATE SET value =
value + excluded.value`` in SQL. Each process then rebuilds its bandit from the totals
(`router.protocols.SharedBandit.load_totals`).

Without Redis the database is the shared store, so several processes (``workers > 1``) still
learn together. Trouble with either store keeps the process on its own state for the moment and
its unsent increments in a backlog, sent before the next read, so a sync never undoes local
learning; the feedback rows themselves are in the request log in any case.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from common.errors import error_text
from requestlog.sql import DB_ERRORS, dialect_insert
from requestlog.tables import bandit_totals
from state.redis_util import RedisGuard

log = logging.getLogger(__name__)

ArmTotals = dict[str, float]  # statistic name -> sum over every observed reward


class BanditStore(Protocol):
    async def add(self, bandit: str, arm: str, increments: Mapping[str, float]) -> None: ...

    async def load(self, bandit: str) -> dict[str, ArmTotals] | None:
        """Every arm's totals, or None when there is no shared view (keep the local state)."""
        ...


Increment = tuple[str, str, dict[str, float]]  # (bandit, arm, statistic -> amount)


class Backlog:
    """Increments the shared store has not taken yet (it was down), sent first once it answers.

    Without it a sync after an outage would replace the local bandit with totals that miss what
    was learned meanwhile. Bounded: past ``limit`` the oldest go (the feedback rows stay in the log).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.items: list[Increment] = []
        self.limit = limit

    def push(self, item: Increment) -> None:
        self.items.append(item)
        if len(self.items) > self.limit:
            del self.items[: len(self.items) - self.limit]

    def take(self) -> list[Increment]:
        items, self.items = self.items, []
        return items

    def put_back(self, items: list[Increment]) -> None:
        self.items[:0] = items
        if len(self.items) > self.limit:
            del self.items[: len(self.items) - self.limit]


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
        self.backlog = Backlog()

    def _key(self, bandit: str) -> str:
        return f"{self._prefix}bandit:{bandit}"

    async def _flush(self, items: list[Increment]) -> None:
        pipe = self._r.pipeline(transaction=True)
        for bandit, arm, increments in items:
            for stat, v in increments.items():
                pipe.hincrbyfloat(self._key(bandit), f"{arm}|{stat}", v)
        try:
            await pipe.execute()
        except BaseException:
            self.backlog.put_back(items)
            raise

    async def add(self, bandit: str, arm: str, increments: Mapping[str, float]) -> None:
        self.backlog.push((bandit, arm, dict(increments)))

        async def remote() -> None:
            await self._flush(self.backlog.take())

        async def local() -> None:
            return None  # kept in the backlog until Redis answers

        await self._guard.run(remote, local)

    async def load(self, bandit: str) -> dict[str, ArmTotals] | None:
        async def remote() -> dict[str, ArmTotals] | None:
            if self.backlog.items:
                await self._flush(self.backlog.take())
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
        ins = dialect_insert(bandit_totals, engine.dialect.name)
        self._upsert = ins.on_conflict_do_update(
            index_elements=["bandit", "arm", "stat"],
            set_={"value": bandit_totals.c.value + ins.excluded.value},
        )
        self._degraded = False
        self.backlog = Backlog()

    async def _flush(self) -> bool:
        """Send the backlog in one transaction; False (and kept) when the database is away."""
        items = self.backlog.take()
        rows = [{"bandit": b, "arm": a, "stat": k, "value": float(v)} for b, a, inc in items for k, v in inc.items()]
        if not rows:
            return True
        try:
            async with self._engine.begin() as conn:
                await conn.execute(self._upsert, rows)
        except DB_ERRORS as exc:
            self.backlog.put_back(items)
            self._trouble(exc)
            return False
        self._degraded = False
        return True

    async def add(self, bandit: str, arm: str, increments: Mapping[str, float]) -> None:
        self.backlog.push((bandit, arm, dict(increments)))
        await self._flush()

    async def load(self, bandit: str) -> dict[str, ArmTotals] | None:
        if not await self._flush():
            return None  # totals without our backlog would undo what this process learned
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
            log.warning("bandits: database unavailable (%s); learning locally until it returns",
                        error_text(exc, with_type=True))
        self._degraded = True
