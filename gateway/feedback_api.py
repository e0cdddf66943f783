"""POST /v1/feedback: a quality signal about a logged request, idempotent per (request id, source).

The row goes to the `feedback` table (the classifier trains from it later) and, through the
router adapter, updates the bandit of the policy that made the decision, at once. A dead
database is reported (503, retry) rather than silently dropping the judgement.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from gateway.edge import authenticate, read_json, validate
from gateway.errors import APIError, store_unavailable
from gateway.schemas import FeedbackRequest
from gateway.services import Services
from requestlog.sql import DB_ERRORS, dialect_insert
from requestlog.tables import feedback, requests


class FeedbackHandler:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def _logged(self, conn: sa.ext.asyncio.AsyncConnection, request_id: str) -> tuple[bool, Any]:
        """Whether the request is known, and its row's bandit decision (None when this process
        still holds the decision itself, or no bandit chose)."""
        if self.s.router.recent_decision(request_id) is not None:
            return True, None
        row = (await conn.execute(
            sa.select(requests.c.id, requests.c.bandit).where(requests.c.id == request_id))).first()
        return (row is not None), (row.bandit if row is not None else None)

    async def post(self, request: Request) -> Response:
        await authenticate(request, self.s.keys, self.s.settings.keys_required)
        fb = validate(FeedbackRequest, await read_json(request, 64 * 1024))
        engine = self.s.engine
        insert = dialect_insert(feedback, engine.dialect.name)
        stmt = insert.values(
            id=uuid.uuid4().hex, request_id=fb.request_id, source=fb.source, score=fb.value,
            comment=fb.comment, created_at=datetime.now(UTC),
        ).on_conflict_do_nothing(index_elements=["request_id", "source"])
        try:
            async with engine.begin() as conn:
                known, logged = await self._logged(conn, fb.request_id)
                if not known:
                    # the row may still be in the log sink's queue: flush once and look again
                    await self.s.sink.flush()
                    known, logged = await self._logged(conn, fb.request_id)
                    if not known:
                        raise APIError(404, f"No logged request with id {fb.request_id!r}.", param="request_id",
                                       code="request_not_found")
                res = await conn.execute(stmt)
        except APIError:
            raise
        except DB_ERRORS as exc:
            raise store_unavailable("Feedback store", exc) from None
        created = bool(res.rowcount)
        if created:
            await self.s.router.feedback(fb.request_id, fb.value, logged)
        body = {"request_id": fb.request_id, "source": fb.source, "score": fb.value,
                "status": "recorded" if created else "duplicate"}
        return Response(orjson.dumps(body), status_code=201 if created else 200, media_type="application/json")
