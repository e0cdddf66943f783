"""Feedback: a quality signal about a logged request, stored once per (request id, source) in the
`feedback` table (the classifier and the answer verifier train from it later) and taught at once
to the bandit that chose the request's model (`GatewayRouter.feedback`, which shares it with every
other process through the bandit store).

Only the key that made the request (or an admin) may judge it, so a key holder cannot steer the
router with other keys' requests; and a request takes at most ``max_sources`` distinct sources, so
varying ``source`` cannot multiply one judgement (re-sending a known source stays idempotent)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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


class NotRequestOwner(Exception):
    """The caller is neither the key that made the request nor an admin."""


class TooManySources(Exception):
    """The request already has feedback from the most distinct sources allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Judge:
    """Who sends the feedback: the caller's key id (None: an anonymous caller on a keyless
    gateway), or an admin, who may judge any request."""

    key_id: str | None
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a judgement left stored: ``created`` False when this (request, source) was judged before, and
    ``score`` the stored score then (the first judgement's, not the one just sent)."""

    created: bool
    score: float


class FeedbackRecorder:
    def __init__(
        self, engine: AsyncEngine, sink: LogSink, router: GatewayRouter, *, max_sources: int = 8
    ) -> None:
        self._engine = engine
        self._sink = sink
        self._router = router
        self._max_sources = max_sources

    @staticmethod
    async def _row(conn: AsyncConnection, request_id: str) -> Any:
        """The request's row (key and bandit decision), locked until the feedback is written so
        concurrent judgements of one request count their sources one at a time."""
        return (
            await conn.execute(
                sa.select(requests.c.id, requests.c.api_key_id, requests.c.bandit)
                .where(requests.c.id == request_id)
                .with_for_update()
            )
        ).first()

    async def record(
        self, request_id: str, source: str, score: float, comment: str | None, judge: Judge
    ) -> Recorded:
        """Store the judgement; `Recorded.created` is False when this (request, source) was already
        judged (nothing changes then, and `Recorded.score` is the score stored before). Raises
        `UnknownRequest`, `NotRequestOwner`, `TooManySources`, or the database's errors
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
            row = await self._row(conn, request_id)
            if row is None:
                # the row may still be in the log sink's queue: flush once and look again
                await self._sink.flush()
                row = await self._row(conn, request_id)
                if row is None:
                    raise UnknownRequest(request_id)
            if not judge.admin and row.api_key_id != judge.key_id:
                raise NotRequestOwner(request_id)
            sources = set(
                (
                    await conn.execute(
                        sa.select(feedback.c.source).where(feedback.c.request_id == request_id)
                    )
                ).scalars()
            )
            if source not in sources and len(sources) >= self._max_sources:
                raise TooManySources(self._max_sources)
            created = bool((await conn.execute(stmt)).rowcount)
            if not created:
                score = (await conn.execute(
                    sa.select(feedback.c.score).where(feedback.c.request_id == request_id, feedback.c.source == source)
                )).scalar_one()
        if created:
            # this process may still hold the decision itself (then it teaches the bandit from that)
            logged = None if self._router.recent_decision(request_id) is not None else row.bandit
            await self._router.feedback(request_id, score, logged)
        return Recorded(created, score)
