"""POST /v1/feedback: a quality signal about a logged request, idempotent per (request id, source).

`service.feedback.FeedbackRecorder` stores it and teaches the bandit that decided; here it is
validated and answered. A dead database is reported (503, retry) rather than silently dropping
the judgement.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.edge import authenticate, read_json, validate
from gateway.errors import APIError, store_unavailable
from gateway.schemas import FeedbackRequest
from gateway.services import Services
from requestlog.sql import DB_ERRORS
from service.feedback import UnknownRequest


class FeedbackHandler:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def post(self, request: Request) -> Response:
        await authenticate(request, self.s.keys, self.s.settings.keys_required)
        fb = validate(FeedbackRequest, await read_json(request, 64 * 1024))
        try:
            created = await self.s.feedback.record(fb.request_id, fb.source, fb.value, fb.comment)
        except UnknownRequest:
            raise APIError(404, f"No logged request with id {fb.request_id!r}.", param="request_id",
                           code="request_not_found") from None
        except DB_ERRORS as exc:
            raise store_unavailable("Feedback store", exc) from None
        body = {"request_id": fb.request_id, "source": fb.source, "score": fb.value,
                "status": "recorded" if created else "duplicate"}
        return Response(orjson.dumps(body), status_code=201 if created else 200, media_type="application/json")
