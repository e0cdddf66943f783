"""Admin API (/admin/api/...): keys now; policies, breakers and budgets as they are wired in.

Admin calls need the configured admin token; without one configured, only loopback callers
are admitted (the embedded default for a developer machine).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.edge import bearer, read_json, validate
from gateway.errors import APIError
from gateway.services import Services

_LOOPBACK = {"127.0.0.1", "::1", "localhost", "testclient"}


class KeyLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_models: list[str] | None = None
    budget_usd: Annotated[float, Field(ge=0)] | None = None
    budget_period: str | None = Field(default=None, pattern="^(day|week|month|total)$")
    rpm_limit: Annotated[int, Field(ge=1)] | None = None
    tpm_limit: Annotated[int, Field(ge=1)] | None = None
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    team: str | None = None
    metadata: dict[str, Any] | None = None


class KeyCreate(KeyLimits):
    name: Annotated[str, Field(min_length=1, max_length=128)]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


class AdminHandlers:
    def __init__(self, services: Services) -> None:
        self.s = services

    def _check(self, request: Request) -> None:
        token = self.s.settings.admin_token
        if token:
            given = bearer(request) or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise APIError(401, "Admin token required.", code="invalid_admin_token")
            return
        host = request.client.host if request.client else ""
        if host not in _LOOPBACK and not host.startswith("127."):
            raise APIError(403, "Admin API is loopback-only unless admin_token is configured.",
                           type="permission_error")

    async def list_keys(self, request: Request) -> Response:
        self._check(request)
        return _json({"data": [k.public() for k in await self.s.keys.list()]})

    async def create_key(self, request: Request) -> Response:
        self._check(request)
        req = validate(KeyCreate, await read_json(request, 64 * 1024))
        limits = req.model_dump(exclude={"name"}, exclude_none=True)
        secret, rec = await self.s.keys.create(req.name, **limits)
        return _json({"key": secret, **rec.public()}, status=201)

    async def update_key(self, request: Request) -> Response:
        self._check(request)
        req = validate(KeyLimits, await read_json(request, 64 * 1024))
        rec = await self.s.keys.update(request.path_params["key_id"], **req.model_dump(exclude_unset=True))
        if rec is None:
            raise APIError(404, "No such key.", code="key_not_found")
        return _json(rec.public())

    async def revoke_key(self, request: Request) -> Response:
        self._check(request)
        key_id = request.path_params["key_id"]
        if not await self.s.keys.revoke(key_id):
            raise APIError(404, "No such active key.", code="key_not_found")
        return _json({"id": key_id, "revoked": True})

    def routes(self) -> list[Route]:
        return [
            Route("/admin/api/keys", self.list_keys, methods=["GET"]),
            Route("/admin/api/keys", self.create_key, methods=["POST"]),
            Route("/admin/api/keys/{key_id}", self.update_key, methods=["PATCH"]),
            Route("/admin/api/keys/{key_id}", self.revoke_key, methods=["DELETE"]),
        ]
