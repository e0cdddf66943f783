"""Log retention: delete request rows older than a cutoff, with their attempts and feedback.

Deletes in batches of request ids, each batch in its own short transaction, so pruning a large log
never holds long locks against the sink's inserts. A request's attempts and feedback go with it:
feedback without its request has no prompt to train from, and attempts without it are orphans.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from requestlog.tables import attempts, feedback, requests


@dataclass(slots=True)
class Pruned:
    requests: int = 0
    attempts: int = 0
    feedback: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "attempts": self.attempts, "feedback": self.feedback}


async def prune(engine: AsyncEngine, older_than: datetime, *, batch: int = 2000) -> Pruned:
    """Delete every request created before ``older_than`` (timezone-aware), batch by batch."""
    if older_than.tzinfo is None:
        raise ValueError("older_than must be timezone-aware")
    out = Pruned()
    old = sa.select(requests.c.id).where(requests.c.created_at < older_than).order_by(requests.c.created_at)
    while True:
        async with engine.begin() as conn:
            ids = list((await conn.execute(old.limit(batch))).scalars())
            if not ids:
                return out
            out.attempts += (await conn.execute(sa.delete(attempts).where(attempts.c.request_id.in_(ids)))).rowcount
            out.feedback += (await conn.execute(sa.delete(feedback).where(feedback.c.request_id.in_(ids)))).rowcount
            out.requests += (await conn.execute(sa.delete(requests).where(requests.c.id.in_(ids)))).rowcount


def cutoff(now: datetime, days: float) -> datetime:
    return now - timedelta(days=days)
