"""The admin console's routes: sign-in, server-rendered pages, static files and its JSON API.

Pages are Jinja2 templates with a little JavaScript (``static/console.js``) that calls the admin
API (``/admin/api/...``, the same endpoints scripts use) with the session cookie and the CSRF
token; charts are drawn by the vendored Chart.js. Everything the console sends passes through
:class:`Redactor`, so no gateway key, admin token or provider key can leave in a page, a JSON
body or a CSV file.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import logging
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from backends.base import REDACTED, redact_text, secret_values
from common.errors import error_text
from common.types import RequestFeatures
from gateway.admin_api import check_admin, is_loopback, listed_keys
from gateway.console.auth import (
    ADMIN_HEADERS,
    COOKIE,
    PAGE_HEADERS,
    RevocationStore,
    Sessions,
    SignInThrottle,
    cross_site,
    csrf_ok,
    session_for,
)
from gateway.console.dashboards import DASHBOARDS, RANGES, Query
from gateway.edge import read_json, validate
from gateway.errors import APIError
from gateway.schemas import ChatCompletionRequest, request_features
from gateway.services import Services
from policies.loader import PolicyValidationError
from policies.registry import PolicyNotFound
from requestlog import tables
from requestlog.rollups import aggregate, quantile
from requestlog.sql import DB_ERRORS
from service import policy_eval
from service.budgets import spend_window_start

log = logging.getLogger("hybridgate.console")

HERE = Path(__file__).resolve().parent
STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}
PAGES = {
    "": "dashboards",
    "policies": "policies",
    "deployments": "deployments",
    "keys": "keys",
    "budgets": "budgets",
    "requests": "requests",
}
# Where sign-in may return to: a console page of this gateway, as a path (with a query of URL-safe characters),
# never a URL of its own (`https://…`, `//host`, `/\host`: a browser goes to another site for each).
RETURN_TO = re.compile(
    r"/admin(?:/(?:" + "|".join(re.escape(p) for p in PAGES if p) + r"))?(?:\?[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*)?"
)
MAX_LOG_PAGE = 500  # rows a request-log page may ask for
REQUEST_LOG_COLUMNS = (
    "created_at",
    "id",
    "api_key_id",
    "user",
    "team",
    "policy",
    "requested_model",
    "served_model",
    "deployment",
    "chosen_model",  # the router's first choice: differs from served_model when a fallback answered
    "status",
    "http_status",
    "latency_ms",
    "cost_usd",
    "attempts_count",
)


class Redactor:
    """Removes secrets from everything the console sends: the admin token, provider keys (from the
    deployments' key environment variables) and anything shaped like a gateway or provider key."""

    PATTERNS = re.compile(
        r"hg-[A-Za-z0-9_\-]{16,}|sk-[A-Za-z0-9_\-]{16,}|(?i:bearer)\s+[A-Za-z0-9._\-~+/=]{8,}"
    )

    def __init__(self, services: Services) -> None:
        s = services.settings
        self.literal = secret_values(
            [s.admin_token] + [os.environ.get(d.api_key_env) for d in s.all_deployments() if d.api_key_env]
        )

    def text(self, text: str) -> str:
        return self.PATTERNS.sub(REDACTED, redact_text(text, self.literal))


# Times a query may name: wide enough for any log, narrow enough that a range's arithmetic (a default
# `since` a month before `until`, a day rounded up) and the conversion to UTC can never leave
# datetime's years 1 to 9999.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def return_to(value: str | None) -> str | None:
    """``value`` when it is a console page to return to after sign-in (`RETURN_TO`), else None."""
    return value if value and len(value) <= 2048 and RETURN_TO.fullmatch(value) else None


def _time(param: str, value: str | None, default: datetime) -> datetime:
    """The query parameter ``param`` as an aware UTC time (naive = UTC), ``default`` when absent, or a
    400 naming it: not ISO 8601, or outside 1970..9000."""
    if not value:
        return default
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise APIError(400, f"'{param}' is not an ISO 8601 time: {value!r}.", param=param) from None
    try:
        t = (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)
        within = EARLIEST <= t < LATEST
    except OverflowError:  # near year 1 or 9999, its UTC offset moves it out of datetime's range
        within = False
    if not within:
        raise APIError(400, f"'{param}' must lie between {EARLIEST.date()} and {LATEST.date()}: {value!r}.",
                       param=param)
    return t


class Console:
    def __init__(self, services: Services, revocations: RevocationStore | None = None) -> None:
        self.s = services
        self.sessions = Sessions(services.settings.admin_token, store=revocations)
        self.throttle = SignInThrottle()
        self.redact = Redactor(services)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True
        )

    # ---- plumbing -----------------------------------------------------------------------------

    def _check(self, request: Request) -> None:
        check_admin(request, self.s.settings.admin_token)

    def json(self, data: Any, status: int = 200) -> Response:
        body = self.redact.text(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode())
        return Response(body, status_code=status, media_type="application/json", headers=ADMIN_HEADERS)

    def html(self, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        body = self.templates.get_template(template).render(**ctx)
        return HTMLResponse(
            self.redact.text(body),
            status_code=status,
            headers=PAGE_HEADERS,
        )

    # ---- sign-in and pages --------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        return self.html("login.html", token_needed=bool(self.s.settings.admin_token),
                         next=return_to(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        if cross_site(request):
            raise APIError(403, "Cross-site sign-in refused.", type="permission_error", code="cross_site")
        form = parse_qs((await request.body())[:8192].decode("utf-8", "replace"))
        token = self.s.settings.admin_token
        # From here to the count of a failure nothing awaits: guesses sent side by side are counted one by
        # one, not all let through before the first is counted.
        address = request.client.host if request.client else ""
        wait = self.throttle.retry_after(address) if token else 0
        if wait:  # asked before the token is compared: a guess made now tells nothing, right or wrong
            raise APIError(429, f"Too many wrong admin tokens from this address: try again in {wait} s.",
                           type="rate_limit_error", code="sign_in_throttled", headers={"retry-after": str(wait)})
        given = (form.get("token") or [""])[0]
        after = return_to((form.get("next") or [""])[0])
        ok = hmac.compare_digest(given.encode(), token.encode()) if token else is_loopback(request)
        if not ok:
            if token and self.throttle.failed(address):
                log.warning("console sign-in: %d wrong admin tokens from %s within %.0f s; refusing its sign-in "
                            "attempts for up to %.0f s", self.throttle.limit, address or "an unknown address",
                            self.throttle.window_s, self.throttle.window_s)
            return self.html(
                "login.html",
                status=401,
                token_needed=bool(token),
                next=after,
                error="Wrong admin token." if token else "Sign-in without a token is loopback-only.",
            )
        self.throttle.succeeded(address)
        cookie, _session = self.sessions.issue()
        resp = RedirectResponse(after or "/admin", status_code=303)
        resp.set_cookie(
            COOKIE,
            cookie,
            max_age=self.sessions.ttl_s,
            path="/admin",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    async def logout(self, request: Request) -> Response:
        session = session_for(request)
        if session is None:
            # the session had ended (expired, or signed out in another tab) while the page stayed open:
            # nothing to end, so the sign-in form says so rather than a JSON error about a CSRF token
            resp = self.html("login.html", status=401, token_needed=bool(self.s.settings.admin_token),
                             error="You were already signed out: the session had ended.")
            resp.delete_cookie(COOKIE, path="/admin")
            return resp
        form = parse_qs((await request.body())[:8192].decode("utf-8", "replace"))
        if (
            cross_site(request)
            or not csrf_ok(request, session, (form.get("csrf_token") or [""])[0])
        ):
            raise APIError(403, "Missing or invalid CSRF token.", type="permission_error", code="csrf_failed")
        try:
            await self.sessions.revoke(session)  # a copy of the cookie must stop working too, in every process
        except DB_ERRORS as exc:
            # ended in this process now; the sync job records it for the others once the database answers
            log.warning("console sign-out: log database unavailable (%s): other gateway processes refuse the "
                        "session once it answers again", error_text(exc, with_type=True).splitlines()[0])
        resp = RedirectResponse("/admin/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/admin")
        return resp

    async def page(self, request: Request) -> Response:
        name = PAGES.get(request.path_params.get("page", ""))
        if name is None:
            raise APIError(404, "No such console page.", code="not_found")
        session = session_for(request)
        if session is None:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return self.html(
                "login.html",
                status=401,
                token_needed=bool(self.s.settings.admin_token),
                next=return_to(here),  # signed in, the operator lands on the page asked for
                error="Sign in to open the console.",
            )
        return self.html(f"{name}.html", page=name, csrf=session.csrf, ranges=list(RANGES))

    async def static(self, request: Request) -> Response:
        if session_for(request) is None:
            raise APIError(401, "Sign in to open the console.", code="not_signed_in")
        path = STATIC.get(request.path_params["name"])
        if path is None:
            raise APIError(404, "No such file.", code="not_found")
        return FileResponse(path, headers=ADMIN_HEADERS | {"cache-control": "private, max-age=3600"})

    # ---- dashboards ---------------------------------------------------------------------------

    def _query(self, request: Request) -> Query:
        p = request.query_params
        now = datetime.now(UTC)
        span = RANGES.get(p.get("range", "7d"))
        if span is None:
            raise APIError(400, f"'range' must be one of {', '.join(RANGES)}.", param="range")
        until = _time("until", p.get("until"), now)
        since = _time("since", p.get("since"), max(until - span, EARLIEST))
        if since >= until:
            raise APIError(400, "'since' must be before 'until'.", param="since")
        model = p.get("model") or None
        deployments = None
        if model:
            deployments = tuple(d.name for d in self.s.router.catalog.deployments if d.model == model) or (
                model,
            )
        return Query(
            since=since,
            until=until,
            policy=p.get("policy") or None,
            api_key_id=p.get("key") or None,
            user=p.get("user") or None,
            team=p.get("team") or None,
            model=model,
            deployments=deployments,
        )

    async def dashboard(self, request: Request) -> Response:
        self._check(request)
        name = request.path_params["name"]
        fn = DASHBOARDS.get(name)
        if fn is None:
            raise APIError(
                404, f"No dashboard named {name!r}; one of {', '.join(DASHBOARDS)}.", code="not_found"
            )
        q = self._query(request)
        async with self.s.engine.connect() as conn:
            table = await fn(conn, q)
        if request.query_params.get("format") == "csv":
            return Response(
                self.redact.text(table.csv()),
                media_type="text/csv",
                headers=ADMIN_HEADERS | {"content-disposition": f'attachment; filename="{name}.csv"'},
            )
        return self.json(
            {"dashboard": name, "since": q.since.isoformat(), "until": q.until.isoformat(), **table.as_dict()}
        )

    async def dashboards_index(self, request: Request) -> Response:
        self._check(request)
        return self.json({"data": list(DASHBOARDS), "ranges": list(RANGES)})

    # ---- request log --------------------------------------------------------------------------

    async def request_log(self, request: Request) -> Response:
        self._check(request)
        p = request.query_params
        r = tables.requests
        q = self._query(request)
        try:
            limit = int(p.get("limit", "50"))
        except ValueError:
            raise APIError(400, "'limit' must be an integer.", param="limit") from None
        if not 1 <= limit <= MAX_LOG_PAGE:
            raise APIError(400, f"'limit' must be between 1 and {MAX_LOG_PAGE}, got {limit}.", param="limit")
        stmt = sa.select(*[r.c[c] for c in REQUEST_LOG_COLUMNS]).where(
            r.c.created_at >= q.since, r.c.created_at < q.until
        )
        for param, col in (
            ("key", "api_key_id"),
            ("user", "user"),
            ("team", "team"),
            ("policy", "policy"),
            ("model", "served_model"),
            ("status", "status"),
        ):
            if p.get(param):
                stmt = stmt.where(r.c[col] == p[param])
        if p.get("before"):
            # keyset pagination on (created_at, id): rows after the last one shown, in the order shown
            # (created_at alone would skip the rows that share the last one's timestamp)
            before = _time("before", p["before"], q.until)
            older = r.c.created_at < before
            if p.get("before_id"):
                older = sa.or_(older, sa.and_(r.c.created_at == before, r.c.id < p["before_id"]))
            stmt = stmt.where(older)
        stmt = stmt.order_by(r.c.created_at.desc(), r.c.id.desc()).limit(limit)
        async with self.s.engine.connect() as conn:
            rows = [dict(x._mapping) for x in await conn.execute(stmt)]
        for row in rows:
            row["created_at"] = row["created_at"].isoformat()
        return self.json(
            {
                "columns": list(REQUEST_LOG_COLUMNS),
                "data": rows,
                "next_before": rows[-1]["created_at"] if len(rows) == limit else None,
                "next_before_id": rows[-1]["id"] if len(rows) == limit else None,
            }
        )

    async def request_detail(self, request: Request) -> Response:
        self._check(request)
        rid = request.path_params["request_id"]
        r, a, f = tables.requests, tables.attempts, tables.feedback
        async with self.s.engine.connect() as conn:
            row = (await conn.execute(sa.select(r).where(r.c.id == rid))).mappings().first()
            if row is None:
                raise APIError(404, f"No logged request {rid!r}.", code="request_not_found")
            attempts = (
                (await conn.execute(sa.select(a).where(a.c.request_id == rid).order_by(a.c.attempt_no)))
                .mappings()
                .all()
            )
            feedback = (await conn.execute(sa.select(f).where(f.c.request_id == rid))).mappings().all()
        return self.json(
            {
                "request": dict(row),
                "attempts": [dict(x) for x in attempts],
                "feedback": [dict(x) for x in feedback],
                "bodies": self.s.settings.log.bodies,
            }
        )

    # ---- deployments and keys -----------------------------------------------------------------

    async def deployments(self, request: Request) -> Response:
        self._check(request)
        router = self.s.router
        deps = router.catalog.deployments
        statuses = await router.breakers.statuses([d.name for d in deps])
        now = datetime.now(UTC)
        # Breaker states (and forcing them) need no database: during a log database outage, when they
        # matter most, the page still lists them, with the last hour's figures left out and a warning.
        warning = None
        try:
            async with self.s.engine.connect() as conn:
                att = await aggregate(
                    conn, "attempts", now - timedelta(hours=1), now, ["deployment", "status"], ("n",)
                )
                hist = await aggregate(
                    conn, "latency", now - timedelta(hours=1), now, ["deployment", "metric", "bin"], ("n",)
                )
        except DB_ERRORS as exc:
            att, hist = [], []
            warning = (f"Log database unavailable, retry later ({type(exc).__name__}): the last hour's "
                       "attempts, errors and latency are not shown.")
        data = []
        for d in deps:
            n = sum(x["n"] for x in att if x["deployment"] == d.name) if warning is None else None
            err = sum(x["n"] for x in att if x["deployment"] == d.name and x["status"] != "ok")
            lat = {x["bin"]: x["n"] for x in hist if x["deployment"] == d.name and x["metric"] == "latency"}
            data.append(
                {
                    "deployment": d.name,
                    "model": d.model,
                    "provider": d.provider,
                    "state": statuses[d.name].state,
                    "forced": statuses[d.name].forced,  # "open"/"closed" while an operator holds it there
                    "attempts_1h": n,
                    "error_rate_1h": err / n if n else None,
                    "latency_p50_ms_1h": quantile(lat, 0.5),
                    "latency_p95_ms_1h": quantile(lat, 0.95),
                }
            )
        return self.json({"data": data, "warning": warning})

    async def keys(self, request: Request) -> Response:
        """Keys with what each spent in its budget period: every key, or a page of them (`key_page`: the
        console asks a page at a time, as a few thousand rows take the browser seconds to draw)."""
        self._check(request)
        keys, paging = await listed_keys(self.s.keys, request)
        now = datetime.now(UTC)
        periods = {k.budget_period or "month" for k in keys}
        # one query per budget period (at most four), grouped by key: not one per key, which made the
        # page take seconds with a few thousand keys
        spend: dict[tuple[str, str], dict[str, Any]] = {}
        async with self.s.engine.connect() as conn:
            for period in sorted(periods):
                for row in await aggregate(conn, "requests", spend_window_start(period, now), now,
                                           ["api_key_id"], ("requests", "cost_usd")):
                    spend[(period, row["api_key_id"])] = row
        data = []
        for k in keys:
            period = k.budget_period or "month"
            agg = spend.get((period, k.id))
            data.append(
                k.public()
                | {
                    "spent_usd": agg["cost_usd"] if agg else 0.0,
                    "spend_period": period,
                    "requests": agg["requests"] if agg else 0,
                }
            )
        return self.json({"data": data, **paging})

    # ---- policies -----------------------------------------------------------------------------

    async def policy_diff(self, request: Request) -> Response:
        self._check(request)
        name = request.path_params["name"]
        reg = self.s.router.registry
        versions = []
        for param in ("a", "b"):
            value = request.query_params.get(param, "")
            if not value.isascii() or not value.isdigit() or len(value) > 9:
                raise APIError(400, f"'{param}' must be a version number: {value[:20]!r}.", param=param)
            versions.append(int(value))
        try:
            a, b = (reg.get(name, v) for v in versions)
        except PolicyNotFound:
            raise APIError(
                404, "Versions 'a' and 'b' must name stored versions.", code="policy_not_found"
            ) from None
        diff = difflib.unified_diff(
            a.row.spec_yaml.splitlines(),
            b.row.spec_yaml.splitlines(),
            f"{name}@{a.row.version}",
            f"{name}@{b.row.version}",
            lineterm="",
        )
        return self.json({"diff": "\n".join(diff)})

    async def policy_evaluate(self, request: Request) -> Response:
        """A draft (unsaved) version: validation errors at their lines, its decision on a sample
        request, and its off-policy estimate on the live version's logged traffic."""
        self._check(request)
        name = request.path_params["name"]
        body = await read_json(request, 256 * 1024)
        spec = body.get("spec_yaml")
        if not isinstance(spec, str) or not spec.strip():
            raise APIError(400, "Body must have a non-empty string field 'spec_yaml'.", param="spec_yaml")
        sample, estimate = body.get("request"), body.get("estimate", True)
        if sample is not None and not isinstance(sample, dict):
            raise APIError(400, "'request' must be an object: a chat request's body.", param="request")
        if not isinstance(estimate, bool):
            raise APIError(400, "'estimate' must be true or false.", param="estimate")
        unknown = sorted(set(body) - {"spec_yaml", "request", "estimate"})
        if unknown:
            raise APIError(400, f"Unknown field {unknown[0]!r}: expected spec_yaml, request, estimate.",
                           param=unknown[0])
        reg = self.s.router.registry
        try:
            draft = await asyncio.to_thread(reg.validate, name, spec)  # seconds for a large policy: off the loop
        except PolicyValidationError as exc:
            return self.json({"valid": False, "errors": exc.as_dicts()}, status=422)
        router = self.s.router
        deps = router.catalog.deployments
        signals = await router.signals(deps, [])
        out: dict[str, Any] = {"valid": True, "live_version": reg.active_version(name),
                               "warnings": router.policy_warnings(draft)}
        if sample is not None:
            req = validate(ChatCompletionRequest, {"model": name, **sample})
            feats = request_features(req, "chat", None, request.headers.get("x-hybridgate-tags"))
            d = await router.simulate(name, feats, policy=draft)
            out["simulate"] = d.as_dict() if d is not None else None
        if estimate:
            rows = await policy_eval.logged_traffic(self.s.engine, name)

            def featurize(text: str) -> RequestFeatures:
                chat = {"model": name, "messages": [{"role": "user", "content": text}]}
                return request_features(ChatCompletionRequest.model_validate(chat), "chat", None, None)

            out["estimate"] = await asyncio.to_thread(
                policy_eval.estimate, draft, rows, deps, signals, router.plugins, featurize
            )
        return self.json(out)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/admin/login", self.login_page, methods=["GET"]),
            Route("/admin/login", self.login, methods=["POST"]),
            Route("/admin/logout", self.logout, methods=["POST"]),
            Route("/admin/static/{name}", self.static, methods=["GET"]),
            Route("/admin/api/console/dashboards", self.dashboards_index, methods=["GET"]),
            Route("/admin/api/console/dashboards/{name}", self.dashboard, methods=["GET"]),
            Route("/admin/api/console/requests", self.request_log, methods=["GET"]),
            Route("/admin/api/console/requests/{request_id}", self.request_detail, methods=["GET"]),
            Route("/admin/api/console/deployments", self.deployments, methods=["GET"]),
            Route("/admin/api/console/keys", self.keys, methods=["GET"]),
            Route("/admin/api/console/policies/{name}/diff", self.policy_diff, methods=["GET"]),
            Route("/admin/api/console/policies/{name}/evaluate", self.policy_evaluate, methods=["POST"]),
            Route("/admin", self.page, methods=["GET"]),
            Route("/admin/{page}", self.page, methods=["GET"]),
        ]
