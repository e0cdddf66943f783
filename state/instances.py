"""Gateway heartbeats: each process keeps a row in ``gateway_instances`` fresh, and looks at the others.

Without Redis, rate limits, concurrency caps and budget holds live in each process: two gateway
processes on one database give every key twice its limits. That is documented, but easy to miss,
so a process warns once when it can see it is not alone without shared state: several workers
configured, or another live heartbeat row in the database (a second gateway started elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from requestlog.sql import dialect_insert
from requestlog.tables import gateway_instances

log = logging.getLogger("hybridgate.state")

UNSHARED_WARNING = (
    "hybridgate: %s, but no redis_url is configured: rate limits, concurrency caps and budget "
    "holds are kept per process, so every process enforces them separately (N processes allow up "
    "to N times each limit). Set redis_url to share them."
)


class Heartbeat:
    """This process's row in ``gateway_instances`` (see module docstring).

    ``beat()`` upserts the row and returns how many *other* processes beat within ``stale_after_s``;
    the first time it sees one while this process has no shared state, it logs the warning (unless
    ``warned``: the start already said so, for several workers configured without Redis:
    `gateway.preflight.unshared_workers_warning`). Rows
    of processes gone for ``forget_after_s`` are deleted by whoever beats next.

    Each call gives up after ``timeout_s`` (``TimeoutError``): a database that hangs (accepts, never
    answers) must neither stall the heartbeat loop for good nor keep a stopping gateway from reaching
    the request log's shutdown, which runs after :meth:`leave`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        shared_state: bool,
        stale_after_s: float = 30.0,
        forget_after_s: float = 3600.0,
        timeout_s: float = 5.0,
        warned: bool = False,
    ) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.shared_state = shared_state
        self.id = uuid.uuid4().hex
        self.stale_after = timedelta(seconds=stale_after_s)
        self.forget_after = timedelta(seconds=forget_after_s)
        self.started_at = datetime.now(UTC)
        # True where the start already said this process is not alone without shared state (several
        # workers configured): the other processes it sees are its siblings, and the advice is the same.
        self.warned = warned
        self.others = 0

    async def beat(self) -> int:
        now = datetime.now(UTC)
        insert = dialect_insert(gateway_instances, self.engine.dialect.name)
        stmt = insert.values(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            shared_state=self.shared_state,
            started_at=self.started_at,
            last_seen=now,
        ).on_conflict_do_update(index_elements=["id"], set_={"last_seen": now})
        t = gateway_instances.c
        async with asyncio.timeout(self.timeout_s), self.engine.begin() as conn:
            await conn.execute(stmt)
            await conn.execute(gateway_instances.delete().where(t.last_seen < now - self.forget_after))
            others = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(gateway_instances)
                    .where(t.id != self.id, t.last_seen >= now - self.stale_after)
                )
            ).scalar_one()
        self.others = int(others)
        if self.others and not self.shared_state and not self.warned:
            self.warned = True
            log.warning(UNSHARED_WARNING, f"{self.others} other gateway process(es) use this database")
        return self.others

    async def leave(self) -> None:
        """Delete this process's row (clean shutdown), so others stop counting it at once."""
        async with asyncio.timeout(self.timeout_s), self.engine.begin() as conn:
            await conn.execute(gateway_instances.delete().where(gateway_instances.c.id == self.id))
