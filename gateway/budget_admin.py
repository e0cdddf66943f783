"""Admin API for user and team budgets: list them with what each has spent, set, remove.

Budgets from the config file are listed (``source: config``) but changed only in the file; budgets
set here (``source: admin``) live in the database, override a config budget of the same scope,
apply at once in this process and within `policy_reload_s` in every other one. Changing a
budget's period starts a fresh account (accounts are per calendar period). A scope names a user or a
team as a key binds them (`admin_api.ScopeName`): spaces and "/" are fine, control characters are not.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin_api import MAX_NAME_CHARS, check_admin, json_response
from gateway.edge import validate
from gateway.errors import APIError, store_unavailable
from gateway.services import Services
from gateway.storable import read_storable_json
from requestlog.sql import DB_ERRORS


class BudgetUpdate(BaseModel):
    """A budget's new limit: numbers are strict, as in every admin body (true is not 1 USD)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    limit_usd: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    period: Literal["day", "week", "month", "total"] = "month"


class BudgetAdminHandlers:
    def __init__(self, services: Services) -> None:
        self.s = services

    def _scope(self, request: Request, *, stored: bool = False) -> str:
        """The path's scope, ``user:<name>`` or ``team:<name>``, the name as a key's user or team may be
        (1 to `MAX_NAME_CHARS` characters; `check_admin` has refused control characters in the path, a final
        newline included). ``stored``: the scope of a budget to
        remove, which only needs the prefix, so one stored before these rules can still go."""
        check_admin(request, self.s.settings.admin_token)
        scope = request.path_params["scope"]
        kind, _, name = scope.partition(":")
        if kind not in ("user", "team") or not name:
            raise APIError(400, "Budget scope must be 'user:<name>' or 'team:<name>'.", param="scope",
                           code="invalid_scope")
        if stored:
            return scope
        if len(name) > MAX_NAME_CHARS:
            raise APIError(400, f"A budget scope's name is at most {MAX_NAME_CHARS} characters, as a key's user "
                           "or team.", param="scope", code="invalid_scope")
        return scope

    async def list_budgets(self, request: Request) -> Response:
        check_admin(request, self.s.settings.admin_token)
        router = self.s.router
        return json_response({"data": await router.scopes.listing(router.budgets)})

    async def put_budget(self, request: Request) -> Response:
        scope = self._scope(request)
        req = validate(BudgetUpdate, await read_storable_json(request, 4096))
        try:
            limit = await self.s.router.scopes.put(scope, req.limit_usd, req.period)
        except DB_ERRORS as exc:
            raise store_unavailable("Budget store", exc) from None
        return json_response({"scope": scope, "limit_usd": limit.limit_usd, "period": limit.period, "source": "admin"})

    async def delete_budget(self, request: Request) -> Response:
        scope = self._scope(request, stored=True)
        try:
            outcome = await self.s.router.scopes.delete(scope)
        except DB_ERRORS as exc:
            raise store_unavailable("Budget store", exc) from None
        if outcome == "deleted":
            return json_response({"scope": scope, "deleted": True})
        if outcome == "in_config":
            raise APIError(409, f"Budget {scope!r} is set in the config file; change it there.", param="scope",
                           code="budget_in_config")
        raise APIError(404, f"No budget for {scope!r}.", param="scope", code="budget_not_found")

    def routes(self) -> list[Route]:
        return [
            Route("/admin/api/budgets", self.list_budgets, methods=["GET"]),
            # `path`: a team or user name may hold a "/" (team:ml/research), as a key's team may
            Route("/admin/api/budgets/{scope:path}", self.put_budget, methods=["PUT"]),
            Route("/admin/api/budgets/{scope:path}", self.delete_budget, methods=["DELETE"]),
        ]
