"""A breaker store that also writes each state change it sees to ``breaker_events``.

Wraps any :class:`~state.breakers.BreakerStore`. A transition is a state different from the last
one this process saw for the deployment (from ``record``, ``force``, ``state``/``states``/``statuses``); its
row is written in the background, so the request path never waits on the database, and a failed
write is logged and dropped (the history is for dashboards, the breaker itself is unaffected).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from common.errors import error_text
from requestlog.rollups import record_breaker_event
from router.breaker import Admission, BreakerStateName, BreakerStatus, ForceMode
from state.breakers import BreakerStore

log = logging.getLogger("hybridgate.breakers")


class LoggedBreakerStore:
    def __init__(self, inner: BreakerStore, engine: AsyncEngine) -> None:
        self.inner = inner
        self._engine = engine
        self._last: dict[str, str] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def _seen(self, deployment: str, state: str) -> None:
        before = self._last.get(deployment, "closed")
        self._last[deployment] = state
        if state != before:
            task = asyncio.get_running_loop().create_task(self._write(deployment, state, datetime.now(UTC)))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _write(self, deployment: str, state: str, at: datetime) -> None:
        try:
            async with self._engine.begin() as conn:
                await record_breaker_event(conn, deployment, state, at)
        except Exception as exc:
            log.warning("breaker transition %s -> %s not recorded: %s", deployment, state, error_text(exc))

    async def allow(self, deployment: str) -> Admission:
        return await self.inner.allow(deployment)

    async def record(
        self, deployment: str, ok: bool, latency_ms: float | None = None, probe: str | None = None
    ) -> BreakerStateName:
        state = await self.inner.record(deployment, ok, latency_ms, probe)
        self._seen(deployment, state)
        return state

    async def release(self, deployment: str, probe: str | None) -> None:
        await self.inner.release(deployment, probe)  # frees a probe slot: never a transition

    async def state(self, deployment: str) -> BreakerStateName:
        state = await self.inner.state(deployment)
        self._seen(deployment, state)
        return state

    async def states(self, deployments: Iterable[str]) -> dict[str, BreakerStateName]:
        out = await self.inner.states(deployments)
        for d, s in out.items():
            self._seen(d, s)
        return out

    async def statuses(self, deployments: Iterable[str]) -> dict[str, BreakerStatus]:
        out = await self.inner.statuses(deployments)
        for d, s in out.items():
            self._seen(d, s.state)
        return out

    async def seconds_until_half_open(self, deployments: Iterable[str]) -> dict[str, float | None]:
        return await self.inner.seconds_until_half_open(deployments)  # a read: never a transition

    async def force(self, deployment: str, mode: ForceMode | None) -> None:
        await self.inner.force(deployment, mode)
        self._seen(deployment, await self.inner.state(deployment))

    async def maintain(self) -> None:
        await self.inner.maintain()  # retried give-backs of probe slots: never a transition

    async def drain(self) -> None:
        """Wait for the transitions written in the background (tests, shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
