"""Console sessions ended by signing out, kept in the log database so every gateway process refuses them.

A console session is a signed cookie any process accepts (gateway/console/auth.py); signing out records
its id here until the session's own expiry, and every process re-reads the records on its sync interval,
so a copy of the cookie stops working everywhere within `policy_reload_s` (at once in the process that
took the sign-out). The database, not Redis: it is there in every deployment, so the revocation holds
across processes with or without Redis. Rows past their expiry are deleted by the next sign-out.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from requestlog.sql import dialect_insert
from requestlog.tables import console_revocations


class SessionRevocationStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(self) -> dict[str, datetime]:
        """The revoked sessions that have not expired yet: session id → its expiry."""
        t = console_revocations
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(t.c.sid, t.c.expires_at)
                                       .where(t.c.expires_at > datetime.now(UTC)))).all()
        return {r.sid: r.expires_at for r in rows}

    async def revoke(self, revoked: dict[str, datetime]) -> None:
        """Record sessions (id → expiry) as revoked, and forget those that have expired since."""
        now = datetime.now(UTC)
        t = console_revocations
        rows = [{"sid": sid, "expires_at": exp, "revoked_at": now} for sid, exp in revoked.items()]
        async with self._engine.begin() as conn:
            if rows:
                ins = dialect_insert(t, self._engine.dialect.name)
                await conn.execute(ins.on_conflict_do_nothing(index_elements=["sid"]), rows)
            await conn.execute(sa.delete(t).where(t.c.expires_at <= now))
