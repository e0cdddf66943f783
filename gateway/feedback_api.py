"""POST /v1/feedback: a quality signal about a logged request, idempotent per (request id, source).

`service.feedback.FeedbackRecorder` stores it and teaches the bandit that decided; here it is
validated and answered, and the caller identified: only the key that made the request (or the
admin token) may judge it (403 otherwise), and a request takes at most ``feedback_max_sources``
distinct sources (409 beyond; a known source stays idempotent, answered with the score it stored). A dead database is reported (503, retry) rather than silently dropping
the judgement; text the database cannot hold (a NUL character) is the caller's 400, never a 503 to retry.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.edge import authenticate, bearer_is, validate
from gateway.errors import APIError, store_unavailable
from gateway.schemas import FeedbackRequest
from gateway.services import Services
from gateway.storable import read_storable_json
from requestlog.sql import DB_ERRORS
from service.feedback import Judge, NotRequestOwner, TooManySources, UnknownRequest


class FeedbackHandler:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def post(self, request: Request) -> Response:
        if bearer_is(request, self.s.settings.admin_token):
            judge = Judge(key_id=None, admin=True)
        else:
            key = await authenticate(request, self.s.keys, self.s.settings.keys_required)
            judge = Judge(key_id=key.id if key is not None else None)
        fb = validate(FeedbackRequest, await read_storable_json(request, 64 * 1024))
        try:
            recorded = await self.s.feedback.record(fb.request_id, fb.source, fb.value, fb.comment, judge)
        except UnknownRequest:
            raise APIError(404, f"No logged request with id {fb.request_id!r}.", param="request_id",
                           code="request_not_found") from None
        except NotRequestOwner:
            raise APIError(403, "Feedback may only come from the API key that made the request.",
                           type="permission_error", param="request_id", code="not_request_owner") from None
        except TooManySources as exc:
            raise APIError(409, f"This request already has feedback from {exc.limit} sources, the most "
                           "allowed; re-send one of them to change nothing.", param="source",
                           code="feedback_sources_exceeded") from None
        except DB_ERRORS as exc:
            raise store_unavailable("Feedback store", exc) from None
        # a duplicate changes nothing: its answer is the score stored, not the one just sent
        body = {"request_id": fb.request_id, "source": fb.source, "score": recorded.score,
                "status": "recorded" if recorded.created else "duplicate"}
        return Response(orjson.dumps(body), status_code=201 if recorded.created else 200,
                        media_type="application/json")
