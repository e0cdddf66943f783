"""POST /v1/feedback: a quality signal about a logged request, idempotent per (request id, source).

Only the key that made the request (or the admin token) may judge it: anyone else gets 403, so a
key holder cannot steer the router with other keys' requests. A request takes at most
``feedback_max_sources`` distinct sources; re-sending a known source stays idempotent, a new one
beyond the bound is refused (409), so varying ``source`` cannot multiply one judgement.

The row goes to the `feedback` table (the classifier trains from it later) and, through the
router adapter, updates the bandit of the policy that made the decision, at once. A dead
database is reported (503, retry) rather than silently dropping the judgement.
"""

from __future__ import annotations

import hmac
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from gateway.edge import authenticate, bearer, read_json, validate
from gateway.errors import APIError, store_unavailable
from gateway.schemas import FeedbackRequest
from gateway.services import Services
from requestlog.sql import DB_ERRORS, dialect_insert
from requestlog.tables import feedback, requests


class FeedbackHandler:
    def __init__(self, services: Services) -> None:
        self.s = services

    @staticmethod
    async def _row(conn: sa.ext.asyncio.AsyncConnection, request_id: str) -> Any:
        """The request's row (key and bandit decision), locked until the feedback is written so
        concurrent judgements of one request count their sources one at a time."""
        return (await conn.execute(
            sa.select(requests.c.id, requests.c.api_key_id, requests.c.bandit)
            .where(requests.c.id == request_id).with_for_update())).first()

    def _is_admin(self, request: Request) -> bool:
        token = self.s.settings.admin_token
        given = bearer(request)
        return bool(token and given and hmac.compare_digest(given.encode(), token.encode()))

    async def post(self, request: Request) -> Response:
        admin = self._is_admin(request)
        key = None if admin else await authenticate(request, self.s.keys, self.s.settings.keys_required)
        fb = validate(FeedbackRequest, await read_json(request, 64 * 1024))
        engine = self.s.engine
        insert = dialect_insert(feedback, engine.dialect.name)
        stmt = insert.values(
            id=uuid.uuid4().hex, request_id=fb.request_id, source=fb.source, score=fb.value,
            comment=fb.comment, created_at=datetime.now(UTC),
        ).on_conflict_do_nothing(index_elements=["request_id", "source"])
        try:
            async with engine.begin() as conn:
                row = await self._row(conn, fb.request_id)
                if row is None:
                    # the row may still be in the log sink's queue: flush once and look again
                    await self.s.sink.flush()
                    row = await self._row(conn, fb.request_id)
                    if row is None:
                        raise APIError(404, f"No logged request with id {fb.request_id!r}.", param="request_id",
                                       code="request_not_found")
                if not admin and row.api_key_id != (key.id if key is not None else None):
                    raise APIError(403, "Feedback may only come from the API key that made the request.",
                                   type="permission_error", param="request_id", code="not_request_owner")
                sources = set((await conn.execute(
                    sa.select(feedback.c.source).where(feedback.c.request_id == fb.request_id))).scalars())
                limit = self.s.settings.feedback_max_sources
                if fb.source not in sources and len(sources) >= limit:
                    raise APIError(409, f"This request already has feedback from {limit} sources, the most "
                                   "allowed; re-send one of them to change nothing.", param="source",
                                   code="feedback_sources_exceeded")
                res = await conn.execute(stmt)
            # this process may still hold the decision itself (then it teaches the bandit from it)
            logged = None if self.s.router.recent_decision(fb.request_id) is not None else row.bandit
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
