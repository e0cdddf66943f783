"""Admin API (/admin/api/...): keys, policies, router artifacts, breakers (budgets: `budget_admin`).

Admin calls need the configured admin token; without one configured, only loopback callers
are admitted (the embedded default for a developer machine). Bodies are checked like the OpenAI
ones (gateway/schemas.py): unknown fields are refused and numbers and flags are strict ("10" is not a
number, true is not 1), so a script's mistake is a 400 naming the field, never a change nobody asked
for (a misspelt field read as "not given" would roll a policy back or un-force a breaker).
"""

from __future__ import annotations

import asyncio
import hmac
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.auth import ADMIN_HEADERS, SAFE_METHODS, cross_site, csrf_ok, session_for
from gateway.edge import bearer, host_name, loopback_name, loopback_peer, read_body, read_json, validate
from gateway.errors import APIError, store_unavailable
from gateway.keys import ApiKey, KeyStore
from gateway.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, request_features
from gateway.services import Services
from gateway.storable import control_character, read_storable_json, refuse_control_in_url
from policies.loader import PolicyValidationError
from policies.registry import PolicyNotFound, PolicyRetired, PolicyVersion, Retirement
from service.artifact_slots import ArtifactPathRefused, RegistryUnavailable, slot_name

# RFC 3339's date-time: a full date, a time to the second, and an offset (Z or +hh:mm) that says which
# instant it is. ISO 8601 shapes Python would also read (no offset, a date alone, week dates) are refused.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_NAIVE = re.compile(r"\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?")
MAX_KEY_LIFETIME_S = 100 * 366 * 86400  # expires_in_s bound: far beyond any key's use, far from datetime's end
MAX_NAME_CHARS = 512  # a user or team name: as long as a request body's `user` may be (gateway/schemas.py)
MAX_KEY_PAGE = 500  # keys one page of a key listing may ask for


def _scope_name(value: str) -> str:
    """A user or team name, as a key binds it and a budget scope names it: any text (spaces, "/", any
    script) but control characters, which no one types and a log line or a listing would show garbled."""
    bad = control_character(value)
    if bad is not None:
        raise PydanticCustomError("control_character", "may not contain control characters (found {char})",
                                  {"char": ascii(bad)})
    return value


ScopeName = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_scope_name)]
"""A key's ``user`` or ``team``: the names budgets can be set for (`gateway.budget_admin`)."""


def _expiry(value: Any) -> datetime:
    """``expires_at`` as given: an RFC 3339 timestamp with its offset, later than now, as UTC."""
    if not isinstance(value, str):
        raise PydanticCustomError("rfc3339", "expected an RFC 3339 timestamp string such as 2027-01-31T18:00:00Z")
    if _NAIVE.fullmatch(value):
        raise PydanticCustomError(
            "rfc3339", "the timestamp has no timezone offset: add Z for UTC (2027-01-31T18:00:00Z) or +hh:mm")
    if not _RFC3339.fullmatch(value):
        raise PydanticCustomError("rfc3339", "expected an RFC 3339 timestamp such as 2027-01-31T18:00:00Z")
    frac = re.search(r"\.(\d+)", value)
    if frac and len(frac.group(1)) > 6:  # Python keeps microseconds: nanoseconds are cut, not refused
        value = value.replace(frac.group(0), frac.group(0)[:7], 1)
    try:
        when = datetime.fromisoformat(value.upper().replace(" ", "T")).astimezone(UTC)
    except (ValueError, OverflowError):
        raise PydanticCustomError("rfc3339", "not a valid date and time (out of range)") from None
    if when <= datetime.now(UTC):
        raise PydanticCustomError(
            "past_expiry", "must be in the future: {when} has passed (revoke a key to end it now)",
            {"when": when.isoformat().replace("+00:00", "Z")})
    return when


class KeyLimits(BaseModel):
    """A key's limits and expiry (POST creates with them; PATCH changes the fields given, null clears one).

    Expiry is given one of two ways, never both: ``expires_at``, an RFC 3339 timestamp with an offset
    that lies in the future, or ``expires_in_s``, whole seconds from now (as OpenAI's Files API counts
    ``expires_after.seconds``; the CLI reads durations such as ``7d`` into it). Either is stored as
    ``expires_at``, the one field key listings show; null for either (on PATCH) removes the expiry.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    allowed_models: list[str] | None = None
    budget_usd: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    budget_period: str | None = Field(default=None, pattern="^(day|week|month|total)$")
    rpm_limit: Annotated[int, Field(ge=1)] | None = None
    tpm_limit: Annotated[int, Field(ge=1)] | None = None
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    user: ScopeName | None = None
    team: ScopeName | None = None
    metadata: dict[str, Any] | None = None
    expires_at: Annotated[datetime, BeforeValidator(_expiry)] | None = None
    expires_in_s: Annotated[int, Field(ge=1, le=MAX_KEY_LIFETIME_S)] | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyLimits:
        if {"expires_at", "expires_in_s"} <= self.model_fields_set:  # the error names the second field
            raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                type=PydanticCustomError("expiry_conflict", "give either expires_at or expires_in_s, not both"),
                loc=("expires_in_s",), input=self.expires_in_s)])
        return self

    def stored(self, **dump: Any) -> dict[str, Any]:
        """The fields (``model_dump(**dump)``) as the key store takes them: ``expires_in_s`` becomes
        ``expires_at``, counted from now."""
        out = self.model_dump(**dump)
        if "expires_in_s" in out:
            seconds = out.pop("expires_in_s")
            out["expires_at"] = None if seconds is None else datetime.now(UTC) + timedelta(seconds=seconds)
        return out


class KeyCreate(KeyLimits):
    name: Annotated[str, Field(min_length=1, max_length=128)]


class PolicyActivation(BaseModel):
    """POST /policies/{name}/activate: the version to make live; none (or an empty body) rolls back."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Annotated[int, Field(ge=1)] | None = None


class BreakerForce(BaseModel):
    """POST /breakers/{deployment}: ``mode`` is required, so a misspelt field never clears a forced state."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: Literal["open", "closed"] | None


class ArtifactActivation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    path: Annotated[str, Field(min_length=1)]
    scorer: str = "default"
    aliases: dict[str, str] = Field(default_factory=dict)


class VerifierActivation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    path: Annotated[str, Field(min_length=1)]
    name: str = "default"


def is_loopback(request: Request) -> bool:
    """Whether the caller is on this machine and addressed it by a loopback name. Both: a web page on
    another site whose DNS name was rebound to 127.0.0.1 reaches the gateway from a loopback address
    and as its own origin (so no cross-site check stops it), but its ``Host`` header names its site."""
    name = host_name(request)
    return loopback_peer(request) and name is not None and loopback_name(name)


def check_admin(request: Request, token: str | None) -> None:
    """The admin token when one is configured; otherwise loopback callers only. A signed-in
    console session (gateway/console/auth.py) also admits, with its CSRF token on every
    state-changing request; browsers' cross-site requests are refused whatever they carry. An
    admitted request with a NUL in its path or query parameters gets a 400 naming the parameter
    (`gateway.storable`): every admin endpoint passes here before it touches the database."""
    if cross_site(request):
        raise APIError(403, "Cross-site requests to the admin API are refused.", type="permission_error",
                       code="cross_site")
    session = session_for(request)
    if session is not None:
        if request.method not in SAFE_METHODS and not csrf_ok(request, session):
            raise APIError(403, "Missing or invalid CSRF token (X-CSRF-Token).", type="permission_error",
                           code="csrf_failed")
        refuse_control_in_url(request)
        return
    if token:
        given = bearer(request) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise APIError(401, "Admin token required.", code="invalid_admin_token")
    elif not is_loopback(request):
        raise APIError(403, "Admin API is loopback-only unless admin_token is configured: call it from this "
                       "machine, addressed as localhost, 127.0.0.1 or [::1].", type="permission_error")
    refuse_control_in_url(request)


def key_page(request: Request) -> tuple[int | None, str | None]:
    """A key listing's page, from its query: ``limit`` (1 to `MAX_KEY_PAGE`; absent: every key, oldest
    first, as before pages existed) and ``before``, the id of the previous page's last key."""
    p = request.query_params
    raw, before = p.get("limit"), p.get("before") or None
    if raw is None:
        if before is not None:
            raise APIError(400, "'before' pages a listing with a 'limit': give both.", param="limit")
        return None, None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6 or not 1 <= int(raw) <= MAX_KEY_PAGE:
        raise APIError(400, f"'limit' must be a whole number from 1 to {MAX_KEY_PAGE}: {raw[:20]!r}.", param="limit")
    return int(raw), before


async def listed_keys(keys: KeyStore, request: Request) -> tuple[list[ApiKey], dict[str, Any]]:
    """The keys of the request's page (`key_page`), and the listing's paging fields: ``next_before`` (the
    cursor of the next page, null after the last) when paged, none otherwise."""
    limit, before = key_page(request)
    if limit is None:
        return await keys.list(), {}
    try:
        page = await keys.list(limit=limit, before=before)
    except KeyError:
        raise APIError(400, f"'before' names no key: {before!r}.", param="before") from None
    return page, {"next_before": page[-1].id if len(page) == limit else None}


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=ADMIN_HEADERS)


class AdminHandlers:
    def __init__(self, services: Services) -> None:
        self.s = services

    def _check(self, request: Request) -> None:
        check_admin(request, self.s.settings.admin_token)

    async def list_keys(self, request: Request) -> Response:
        """Every key, oldest first; with ``limit``, a page of them, newest first (`key_page`)."""
        self._check(request)
        keys, paging = await listed_keys(self.s.keys, request)
        return json_response({"data": [k.public() for k in keys], **paging})

    async def create_key(self, request: Request) -> Response:
        self._check(request)
        req = validate(KeyCreate, await read_storable_json(request, 64 * 1024))
        limits = req.stored(exclude={"name"}, exclude_none=True)
        secret, rec = await self.s.keys.create(req.name, **limits)
        return json_response({"key": secret, **rec.public()}, status=201)

    async def update_key(self, request: Request) -> Response:
        self._check(request)
        req = validate(KeyLimits, await read_storable_json(request, 64 * 1024))
        rec = await self.s.keys.update(request.path_params["key_id"], **req.stored(exclude_unset=True))
        if rec is None:
            raise APIError(404, "No such key.", code="key_not_found")
        return json_response(rec.public())

    async def revoke_key(self, request: Request) -> Response:
        self._check(request)
        key_id = request.path_params["key_id"]
        if not await self.s.keys.revoke(key_id):
            raise APIError(404, "No such active key.", code="key_not_found")
        return json_response({"id": key_id, "revoked": True})

    # ---- policies ----------------------------------------------------------------------------

    def _versionjson_response(self, v: PolicyVersion) -> dict[str, Any]:
        r = v.row
        reg = self.s.router.registry
        return {"name": r.name, "version": r.version, "active": reg.active_version(r.name) == r.version,
                "created_at": r.created_at.isoformat() if hasattr(r.created_at, "isoformat") else r.created_at,
                "created_by": r.created_by, "comment": r.comment, "spec_yaml": r.spec_yaml}

    async def _policy_text(self, request: Request) -> tuple[str, str | None]:
        """A policy body: raw YAML (content-type yaml/text) or JSON {"spec_yaml": ..., "comment": ...}."""
        ctype = request.headers.get("content-type", "")
        if "yaml" in ctype or ctype.startswith("text/"):
            raw = await read_body(request, 256 * 1024)
            return raw.decode("utf-8", errors="replace"), request.headers.get("x-comment")
        data = await read_storable_json(request, 256 * 1024)
        spec = data.get("spec_yaml")
        if not isinstance(spec, str) or not spec.strip():
            raise APIError(400, "Body must have a non-empty string field 'spec_yaml'.", param="spec_yaml")
        comment = data.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise APIError(400, "'comment' must be a string.", param="comment")
        unknown = sorted(set(data) - {"spec_yaml", "comment"})
        if unknown:
            raise APIError(400, f"Unknown field {unknown[0]!r}: expected spec_yaml, comment.", param=unknown[0])
        return spec, comment

    @staticmethod
    def _invalid(exc: PolicyValidationError) -> APIError:
        first = exc.errors[0] if exc.errors else None
        where = f" (line {first.line})" if first is not None and first.line else ""
        field = f"{first.path}: " if first is not None and first.path else ""
        msg = f"Invalid policy: {field}{first.message}{where}" if first else "Invalid policy."
        err = APIError(422, msg, param=(first.path or None) if first else None, code="invalid_policy")
        err.details = exc.as_dicts()
        return err

    @staticmethod
    def _retirement_json(r: Retirement | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {"version": r.version, "retired_at": r.retired_at.isoformat(), "retired_by": r.retired_by}

    async def list_policies(self, request: Request) -> Response:
        """Every stored policy, retired ones too (``retired`` says when and by whom; null while live)."""
        self._check(request)
        reg = self.s.router.registry
        await reg.reload()
        return json_response({"data": [
            {"name": p.name, "active_version": p.active_version, "latest_version": p.latest_version,
             "versions": p.versions, "description": p.description, "retired": self._retirement_json(p.retired)}
            for p in reg.list()]})

    async def get_policy(self, request: Request) -> Response:
        self._check(request)
        name = request.path_params["name"]
        reg = self.s.router.registry
        try:
            versions = reg.versions(name)
        except PolicyNotFound:
            raise APIError(404, f"No policy named {name!r}.", code="policy_not_found") from None
        if not versions:
            raise APIError(404, f"No policy named {name!r}.", code="policy_not_found")
        return json_response({"name": name, "active_version": reg.active_version(name),
                      "versions": [self._versionjson_response(v) for v in versions],
                      "retired": self._retirement_json(reg.retired(name)),
                      "retirements": [self._retirement_json(r) for r in reg.retirements(name)]})

    async def put_policy(self, request: Request) -> Response:
        """Create or update (a new version, activated). Validation errors name field and line."""
        self._check(request)
        name = request.path_params["name"]
        spec, comment = await self._policy_text(request)
        try:
            v = await self.s.router.registry.put(name, spec, created_by="admin-api", comment=comment)
        except PolicyValidationError as exc:
            raise self._invalid(exc) from None
        return json_response(self._versionjson_response(v) | {"warnings": self.s.router.policy_warnings(v.policy)},
                             status=201)

    async def validate_policy(self, request: Request) -> Response:
        self._check(request)
        spec, _ = await self._policy_text(request)
        try:
            # a worker thread: a large policy parses for seconds, which traffic would otherwise wait for
            policy = await asyncio.to_thread(self.s.router.registry.validate, request.path_params["name"], spec)
        except PolicyValidationError as exc:
            raise self._invalid(exc) from None
        return json_response({"valid": True, "warnings": self.s.router.policy_warnings(policy)})

    async def activate_policy(self, request: Request) -> Response:
        """Roll back (or forward) to a stored version: {"version": N}; no version (or no body, however
        framed) = the one before the active one."""
        self._check(request)
        name = request.path_params["name"]
        version = validate(PolicyActivation, await read_json(request, 4096, allow_empty=True)).version
        reg = self.s.router.registry
        try:
            v = await reg.activate(name, version) if version is not None else await reg.rollback(name)
        except PolicyRetired:
            raise APIError(409, f"Policy {name!r} is not live, so there is no version to roll back from: name the "
                           "version to restore ({\"version\": N}) or PUT a new one.", code="policy_retired") from None
        except (PolicyNotFound, KeyError, ValueError) as exc:
            what = f"{name}@{version}" if version is not None else f"the version of {name} before the active one"
            detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise APIError(404, f"Cannot activate {what}: no such stored version ({detail}).",
                           param="version" if version is not None else None, code="policy_not_found") from None
        return json_response(self._versionjson_response(v))

    async def retire_policy(self, request: Request) -> Response:
        """Retire a policy: it stops routing in every gateway process (its name is then an unknown model,
        404, and leaves /v1/models) and its versions stay stored as history, with who retired it and when.
        A later PUT routes it again as a new version; activating a stored version restores that one.
        Refused (409) for the policy the configuration names as ``default_model``."""
        self._check(request)
        name = request.path_params["name"]
        reg = self.s.router.registry
        await reg.reload()
        if name not in reg.names():
            raise APIError(404, f"No policy named {name!r}.", code="policy_not_found")
        if name == self.s.settings.default_model:
            raise APIError(409, f"Policy {name!r} is the configured default_model: change default_model in the "
                           "configuration before retiring it.", code="policy_in_use")
        who = "console" if session_for(request) is not None else "admin-api"
        try:
            r = await reg.retire(name, retired_by=who)
        except PolicyNotFound:
            raise APIError(404, f"No policy named {name!r}.", code="policy_not_found") from None
        except PolicyRetired as exc:
            when = (f" (retired {exc.retirement.retired_at.isoformat()} by {exc.retirement.retired_by})"
                    if exc.retirement is not None else "")
            raise APIError(404, f"No live policy named {name!r}{when}.", code="policy_not_found") from None
        return json_response({"name": name, "retired": True, "version": r.version,
                              "retired_at": r.retired_at.isoformat(), "retired_by": r.retired_by,
                              "versions": len(reg.versions(name))})

    async def simulate(self, request: Request) -> Response:
        """The decision and its trace for a request body, without calling any provider."""
        self._check(request)
        name = request.path_params["name"]
        body = await read_json(request, self.s.settings.max_body_bytes)
        body.setdefault("model", name)
        schema = EmbeddingRequest if "input" in body and "messages" not in body else (
            CompletionRequest if "prompt" in body and "messages" not in body else ChatCompletionRequest)
        req = validate(schema, body)
        endpoint = {ChatCompletionRequest: "chat", CompletionRequest: "completion"}.get(schema, "embedding")
        router = self.s.router
        features = request_features(req, endpoint, None, request.headers.get("x-hybridgate-tags"))
        d = await router.simulate(name, features)
        if d is None:
            raise APIError(404, f"No active policy named {name!r}.", code="policy_not_found")
        return json_response({"policy": name, "version": router.registry.active_version(name), **d.as_dict()})

    async def calibrate(self, request: Request) -> Response:
        """The classifier policy's cost weight (``lambda``) that sends about ``share`` of the given
        prompts first to ``model``: {"prompts": [...], "model": "strong-model", "share": 0.2}. The
        policy's own decision runs on each prompt (no provider called); apply the value with a PUT."""
        self._check(request)
        name = request.path_params["name"]
        body = await read_json(request, self.s.settings.max_body_bytes)
        prompts, model, share = body.get("prompts"), body.get("model"), body.get("share")
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts) \
                or len(prompts) > 5000:
            raise APIError(400, "'prompts' must be a list of 1 to 5000 strings (representative traffic).",
                           param="prompts")
        if not isinstance(model, str) or not model:
            raise APIError(400, "'model' must name the model whose share is calibrated.", param="model")
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0.0 <= share <= 1.0:
            raise APIError(400, "'share' must be a number in [0, 1].", param="share")
        router = self.s.router
        if router.registry.active(name) is None:
            raise APIError(404, f"No active policy named {name!r}.", code="policy_not_found")
        reqs = [request_features(validate(ChatCompletionRequest, {"model": name, "messages": [
            {"role": "user", "content": p}]}), "chat", None, None) for p in prompts]
        try:
            cal = await router.calibrate(name, reqs, model, float(share))
        except ValueError as exc:  # the policy's selector is not a classifier
            raise APIError(400, str(exc)) from None
        return json_response({"policy": name, "version": router.registry.active_version(name), "model": model,
                              "target_share": share, **cal.as_dict()})

    # ---- learned router artifacts ------------------------------------------------------------

    async def activate_artifact(self, request: Request) -> Response:
        """Load a trained router artifact ({"path": DIR, "scorer": "default", "aliases": {...}}) and make
        it the named scorer at once, without a restart; recorded in router_artifacts, from where every
        other process loads it within ``policy_reload_s`` (service/artifact_slots.py)."""
        self._check(request)
        req = validate(ArtifactActivation, await read_storable_json(request, 64 * 1024))
        return await self._activate(req.path, req.scorer, "scorer", "scorer", req.aliases)

    async def activate_verifier(self, request: Request) -> Response:
        """Load an answer verifier ({"path": DIR, "name": "default"}) for cascades' ``score: verifier``,
        here at once and in every other process within ``policy_reload_s``."""
        self._check(request)
        req = validate(VerifierActivation, await read_storable_json(request, 64 * 1024))
        return await self._activate(req.path, req.name, "verifier", "name")

    async def _activate(
        self, path: str, name: str, kind: str, name_param: str, aliases: dict[str, str] | None = None
    ) -> Response:
        if not name or ":" in name:
            raise APIError(400, f"'{name_param}' must be a non-empty name without ':'.", param=name_param)
        slots = self.s.artifacts
        try:
            row = await slots.activate(slot_name(kind, name), path, aliases)
        except ArtifactPathRefused:  # one answer for absent, outside and escaping paths alike
            raise APIError(400, "'path' does not name an artifact directory inside the configured "
                           "router.artifacts_dir.", param="path", code="invalid_artifact") from None
        except RegistryUnavailable as exc:  # loaded here, but the other processes cannot be told: retryable
            raise store_unavailable("Artifact registry (loaded in this process only)", exc) from None
        except (OSError, ValueError, TypeError) as exc:
            raise APIError(400, f"Cannot load artifact at {path!r}: {exc}", param="path",
                           code="invalid_artifact") from None
        manifest = row["manifest"]
        models = manifest.get("models") if kind == "scorer" else [manifest.get("judges_model")]
        return json_response({kind: name, "version": row["version"], "models": models}, status=201)

    # ---- breakers ------------------------------------------------------------------------------

    async def list_breakers(self, request: Request) -> Response:
        self._check(request)
        names = [d.name for d in self.s.router.catalog.deployments]
        statuses = await self.s.router.breakers.statuses(names)
        return json_response({"data": [{"deployment": n, "state": statuses[n].state, "forced": statuses[n].forced}
                                       for n in names]})

    async def force_breaker(self, request: Request) -> Response:
        """Manual override: {"mode": "open" | "closed" | null} (null returns to automatic)."""
        self._check(request)
        name = request.path_params["deployment"]
        if name not in self.s.router.catalog.by_name:
            raise APIError(404, f"No deployment named {name!r}.", code="deployment_not_found")
        mode = validate(BreakerForce, await read_json(request, 4096)).mode
        await self.s.router.breakers.force(name, mode)
        status = (await self.s.router.breakers.statuses([name]))[name]
        self.s.metrics.breaker_open.labels(name).set(1 if status.state == "open" else 0)
        return json_response({"deployment": name, "state": status.state, "forced": status.forced})

    def routes(self) -> list[Route]:
        return [
            Route("/admin/api/policies", self.list_policies, methods=["GET"]),
            Route("/admin/api/policies/{name}", self.get_policy, methods=["GET"]),
            Route("/admin/api/policies/{name}", self.put_policy, methods=["PUT", "POST"]),
            Route("/admin/api/policies/{name}", self.retire_policy, methods=["DELETE"]),
            Route("/admin/api/policies/{name}/validate", self.validate_policy, methods=["POST"]),
            Route("/admin/api/policies/{name}/activate", self.activate_policy, methods=["POST"]),
            Route("/admin/api/policies/{name}/simulate", self.simulate, methods=["POST"]),
            Route("/admin/api/policies/{name}/calibrate", self.calibrate, methods=["POST"]),
            Route("/admin/api/router/artifacts", self.activate_artifact, methods=["POST"]),
            Route("/admin/api/router/verifiers", self.activate_verifier, methods=["POST"]),
            Route("/admin/api/breakers", self.list_breakers, methods=["GET"]),
            Route("/admin/api/breakers/{deployment}", self.force_breaker, methods=["POST"]),
            Route("/admin/api/keys", self.list_keys, methods=["GET"]),
            Route("/admin/api/keys", self.create_key, methods=["POST"]),
            Route("/admin/api/keys/{key_id}", self.update_key, methods=["PATCH"]),
            Route("/admin/api/keys/{key_id}", self.revoke_key, methods=["DELETE"]),
        ]
