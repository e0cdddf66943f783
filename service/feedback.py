"""Feedback: a quality signal about a logged request, stored once per (request id, source) in the
`feedback` table (the classifier and the answer verifier train from it later) and taught at once
to the bandit that chose the request's model (`GatewayRouter.feedback`, which shares it with every
other process through the bandit store)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from requestlog.sink import LogSink
from requestlog.sql import dialect_insert
from requestlog.tables import feedback, requests
from service.routing import GatewayRouter


class UnknownRequest(Exception):
    """No logged request has this id (after the log sink's queue was flushed once)."""


class FeedbackRecorder:
    def __init__(self, engine: AsyncEngine, sink: LogSink, router: GatewayRouter) -> None:
        self._engine = engine
        self._sink = sink
        self._router = router

    async def _logged(self, conn: AsyncConnection, request_id: str) -> tuple[bool, Any]:
        """Whether the request is known, and its row's bandit decision (None when this process
        still holds the decision itself, or no bandit chose)."""
        if self._router.recent_decision(request_id) is not None:
            return True, None
        row = (
            await conn.execute(sa.select(requests.c.id, requests.c.bandit).where(requests.c.id == request_id))
        ).first()
        return (row is not None), (row.bandit if row is not None else None)

    async def record(self, request_id: str, source: str, score: float, comment: str | None) -> bool:
        """Store the judgement; True when it is new, False when this (request, source) was already
        judged (nothing changes then). Raises `UnknownRequest`, or the database's errors
        (`requestlog.sql.DB_ERRORS`) when it is away, so the caller can ask for a retry."""
        stmt = (
            dialect_insert(feedback, self._engine.dialect.name)
            .values(
                id=uuid.uuid4().hex,
                request_id=request_id,
                source=source,
                score=score,
                comment=comment,
                created_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing(index_elements=["request_id", "source"])
        )
        async with self._engine.begin() as conn:
            known, logged = await self._logged(conn, request_id)
            if not known:
                # the row may still be in the log sink's queue: flush once and look again
                await self._sink.flush()
                known, logged = await self._logged(conn, request_id)
                if not known:
                    raise UnknownRequest(request_id)
            created = bool((await conn.execute(stmt)).rowcount)
        if created:
            await self._router.feedback(request_id, score, logged)
        return created
