"""The app factory: builds every part from Settings and wires them into one Starlette app.

No module-level state: tests build as many apps as they like, each with its own database,
sink, metrics registry and backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from backends.base import Backend
from backends.registry import build_backend
from common.errors import error_text
from common.types import DeploymentConfig
from gateway.admin_api import AdminHandlers
from gateway.budget_admin import BudgetAdminHandlers
from gateway.config import ConfigError, Settings
from gateway.console.app import Console
from gateway.console.auth import ADMIN_HEADERS, cross_site
from gateway.edge import authenticate, bearer_is, host_allowed, host_not_allowed, loopback_peer
from gateway.errors import APIError, internal_error, store_unavailable
from gateway.feedback_api import FeedbackHandler
from gateway.keys import KeyStore
from gateway.messages_api import anthropic_error, is_messages_path
from gateway.openai_api import OpenAIHandlers
from gateway.openapi import openapi_document
from gateway.preflight import AppChecks, check_app, checked_by_serve, start_warnings, unshared_workers_warning
from gateway.responses_api import StoredResponseHandlers
from gateway.services import Services
from local_model.device import DeviceUnavailableError
from policies.db_store import DbPolicyStore
from policies.registry import PolicyRegistry
from requestlog.retention import cutoff, prune
from requestlog.sink import LogSink
from requestlog.spend import LoggedSpend
from requestlog.sql import DB_ERRORS
from requestlog.urls import connect_timeout_args
from router.breaker import BreakerConfig
from router.plugins import LinUCBBandit, ScoredLinUCBBandit, ThompsonBandit
from router.protocols import Plugins
from service.artifact_slots import ArtifactSlots, slot_name
from service.budgets import config_limits
from service.cascade import Cascades
from service.executor import Executor
from service.feedback import FeedbackRecorder
from service.metrics import LabelNames, Metrics
from service.remote_load import RemoteLoadPoller, engine_load
from service.routing import Catalog, GatewayRouter
from state.bandits import BanditStore, DbBanditStore, InProcessBanditStore, RedisBanditStore
from state.breaker_log import LoggedBreakerStore
from state.breakers import BreakerStore, InProcessBreakerStore, RedisBreakerStore
from state.budget_reconcile import SpendReconciler
from state.budgets import BudgetStore, InProcessBudgetStore, RedisBudgetStore
from state.console_sessions import SessionRevocationStore
from state.instances import Heartbeat
from state.policy_events import RedisPolicyEvents
from state.ratelimits import InProcessRateLimitStore, RateLimitStore, RedisRateLimitStore
from state.redis_util import make_redis
from state.scope_budgets import ScopeBudgetStore

log = logging.getLogger("hybridgate")
DEFAULT_POLICIES = Path(__file__).resolve().parents[1] / "policies" / "defaults"


def breaker_config(settings: Settings) -> BreakerConfig:
    """The circuit breaker settings every deployment's breaker starts from."""
    b = settings.breaker
    return BreakerConfig(window_s=b.window_s, min_requests=b.min_requests, error_rate=b.error_rate,
                         consecutive_failures=b.consecutive_failures, latency_ms=b.latency_ms,
                         cooldown_s=b.cooldown_s, half_open_probes=b.half_open_probes)


def build_state(settings: Settings, engine: AsyncEngine) -> tuple[BreakerStore, BudgetStore, RateLimitStore,
                                                                BanditStore, Any]:
    """Shared state: Redis when configured (every process sees one state), else in-process. Bandit
    statistics change only on feedback and are worth keeping, so by default they live in the
    database, durable across restarts of Redis and of the gateway."""
    cfg = breaker_config(settings)
    # Budget accounts open from, and catch up with, the costs in the request log (state/budget_reconcile.py).
    spend = SpendReconciler(LoggedSpend(engine))
    where = settings.router.bandit_store
    bandits: BanditStore = DbBanditStore(engine) if where == "database" else InProcessBanditStore()
    if settings.redis_url:
        client = make_redis(settings.redis_url, timeout_s=settings.redis_timeout_s,
                            connect_timeout_s=settings.redis_connect_timeout_s)
        p = settings.redis_prefix
        if where == "redis":
            bandits = RedisBanditStore(client, prefix=p)
        ttl = settings.lease_ttl_s
        return (RedisBreakerStore(client, prefix=p, config=cfg),
                RedisBudgetStore(client, prefix=p, reconciler=spend, reservation_ttl_s=ttl),
                RedisRateLimitStore(client, prefix=p, lease_ttl_s=ttl), bandits, client)
    return InProcessBreakerStore(cfg), InProcessBudgetStore(reconciler=spend), InProcessRateLimitStore(), bandits, None


async def _every(interval_s: float, stop: asyncio.Event, *jobs: tuple[str, Callable[[], Awaitable[Any]]]) -> None:
    """Run each job now and then every ``interval_s`` until ``stop``. A failing job is logged and
    tried again next round (a store hiccup must never end the loop), and never stops the others."""
    while not stop.is_set():
        for what, job in jobs:
            try:
                await job()
            except Exception as exc:
                log.warning("%s failed: %s", what, error_text(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


async def _prune_log(engine: AsyncEngine, days: float) -> None:
    """Log retention. Every worker runs it; the deletes are idempotent and batched, so overlapping
    runs only repeat an empty query."""
    pruned = await prune(engine, cutoff(datetime.now(UTC), days))
    if pruned.requests:
        log.info("log retention: deleted %s", pruned.as_dict())


def check_observer(request: Request, settings: Settings) -> None:
    """/metrics and /readyz describe the deployment (names, traffic, dependencies): where keys are
    required they need the metrics token, or, with none configured, a loopback caller. A loopback
    caller without the token must address the gateway by a loopback name or one of `allowed_hosts`
    (`edge.host_allowed`: a web page whose DNS name was rebound to 127.0.0.1 comes from loopback too),
    keys required or not."""
    token = settings.metrics_token
    given = bearer_is(request, token)
    if settings.keys_required:
        if token:
            if not given:
                raise APIError(401, "Metrics token required.", code="invalid_metrics_token")
            return
        if not loopback_peer(request):
            raise APIError(403, "This endpoint is loopback-only unless metrics_token is configured.",
                           type="permission_error")
    if not given and not host_allowed(request, settings.allowed_hosts):
        raise host_not_allowed(request, "Requests for this endpoint", "the metrics_token")


Endpoint = Callable[[Request], Awaitable[Response]]


_CROSS_SITE = APIError(403, "Cross-site requests from a web browser are refused by a gateway that does not "
                           "require keys: call it from a program, or send a gateway API key.",
                      type="permission_error", code="cross_site")


def host_checked(endpoint: Endpoint, services: Services) -> Endpoint:
    """``endpoint`` (a /v1 route's) on a gateway that does not require keys, refusing what only a web page
    sends without a valid credential (a gateway key, or the admin token, which e.g. judges any request on
    /v1/feedback), in the error shape of the route's API: a caller on this machine that addresses the
    gateway by a name neither loopback nor in `allowed_hosts` (`edge.host_allowed`: a page whose DNS name
    was rebound to 127.0.0.1), and a browser's cross-site request (a page that posts a "simple" text/plain
    request to http://127.0.0.1:8080 cannot read the answer, but would spend the provider credit; the
    gateway sends no CORS headers, so no cross-site page can use it anyway). A page knows no credential,
    so a request with one passes under any name. Where keys are required the key already keeps pages out
    and the routes are not wrapped; here the check is a few header reads unless one of them is a page's."""
    allowed = frozenset(services.settings.allowed_hosts)
    admin_token = services.settings.admin_token

    async def checked(request: Request) -> Response:
        host_ok = host_allowed(request, allowed)
        if (not host_ok or cross_site(request)) and not bearer_is(request, admin_token) \
                and await authenticate(request, services.keys, False) is None:
            err = _CROSS_SITE if host_ok else host_not_allowed(request)
            return anthropic_error(err) if is_messages_path(request.url.path) else err.response()
        return await endpoint(request)

    return checked


# Driver errors that blame the statement (a constraint, a type, a bug), not a database that is away.
STATEMENT_ERRORS = (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.DataError, sa_exc.NotSupportedError)


def database_guarded(routes: list[BaseRoute]) -> list[BaseRoute]:
    """Admin routes (API and console) whose database is away, down or hung past the engine's timeouts,
    answer 503 ``store_unavailable`` naming the log database, with Retry-After, as feedback does: the
    console shows that on every page the operator opens during the outage, not an internal error (and a
    traceback in the log per page)."""

    def guarded(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def call(request: Request) -> Response:
            try:
                return await endpoint(request)
            except DB_ERRORS as exc:
                if isinstance(exc, STATEMENT_ERRORS):
                    raise  # the statement's fault, not an outage: an internal error, logged with its traceback
                # the first line only: a driver error goes on with the statement and its parameters
                log.warning("%s %s: log database unavailable: %s", request.method, request.url.path,
                            error_text(exc, with_type=True).splitlines()[0])
                raise store_unavailable("Log database", exc) from None

        return call

    return [Route(r.path, guarded(r.endpoint), methods=list(r.methods or ()), name=r.name)
            if isinstance(r, Route) else r for r in routes]


def label_names(catalog: Catalog, registry: PolicyRegistry) -> LabelNames:
    """Metric label values: configured models, deployments and providers, and existing policies."""
    providers = {d.provider for d in catalog.deployments}
    return LabelNames(
        models=lambda n: n in catalog.by_model or registry.active(n) is not None,
        policies=lambda n: registry.active(n) is not None,
        deployments=catalog.by_name.__contains__,
        providers=providers.__contains__,
    )
def key_change_events(settings: Settings, client: Any = None) -> RedisPolicyEvents | None:
    """Pub/sub of API key changes (revoke, update) on ``<redis_prefix>keys``, the path policy changes
    take, so a revocation reaches every process at once (the key cache's TTL is the fallback); None
    without Redis. Without ``client`` (the command line) it makes a client of its own: close it
    with ``events.client.aclose()``."""
    if not settings.redis_url:
        return None
    if client is None:
        client = make_redis(settings.redis_url, timeout_s=settings.redis_timeout_s,
                            connect_timeout_s=settings.redis_connect_timeout_s)
    return RedisPolicyEvents(client, channel=f"{settings.redis_prefix}keys", what="api key")


def _build_backend(settings: Settings, d: DeploymentConfig) -> Backend:
    """A deployment's backend; a deployment its backend refuses (no api_base, a checkpoint that is not
    one, a device this machine's torch cannot use) is a ConfigError naming where the config sets it."""
    try:
        return build_backend(d)
    except (ValueError, OSError) as exc:
        i = next((i for i, c in enumerate(settings.deployments) if c is d), None)
        if isinstance(exc, DeviceUnavailableError):
            where = "local_model.device" if i is None else f"deployments[{i}].local_device ({d.name!r})"
        else:
            where = "local_model.checkpoint" if i is None else f"deployments[{i}] ({d.name!r})"
        reason = str(exc).removeprefix(f"deployment {d.name!r}: ").removeprefix("provider 'local': ")
        if isinstance(exc, json.JSONDecodeError):
            reason = f"{d.upstream_model}/config.json is not valid JSON ({exc})"
        raise ConfigError(f"{where}: {reason}") from exc


def gateway_engine(settings: Settings) -> AsyncEngine:
    """The engine of the gateway's own queries (keys, policies, feedback, bandit totals, admin): a
    pooled connection is pinged before use, and opening a connection and each statement are bounded
    (`database_connect_timeout_s`, `database_timeout_s`), so a database that stops answering (a hung
    server, a proxy that swallows packets) fails the call like a refused one instead of holding it."""
    url = settings.database_url
    return create_async_engine(url, pool_pre_ping=True, connect_args=connect_timeout_args(
        url, settings.database_connect_timeout_s, command_timeout_s=settings.database_timeout_s))


def build_services(settings: Settings, backends: dict[str, Backend] | None = None) -> Services:
    engine = gateway_engine(settings)
    sink = LogSink(
        settings.database_url,  # its own small pool: log writes never queue behind admin queries
        connect_timeout_s=settings.database_connect_timeout_s,
        spool_dir=settings.log.spool_dir,
        batch_max_rows=settings.log.batch_max_rows,
        batch_max_ms=settings.log.batch_max_ms,
        durability=settings.log.durability,
        wal_commit_ms=settings.log.wal_commit_ms,
    )
    deployments = settings.all_deployments()
    backends = dict(backends or {})
    for d in deployments:
        if d.name not in backends:
            backends[d.name] = _build_backend(settings, d)
    metrics = Metrics()
    breakers, budgets, ratelimits, bandit_store, redis_client = build_state(settings, engine)
    breakers = LoggedBreakerStore(breakers, engine)  # transitions, for the console's breaker history
    remote_load = RemoteLoadPoller(deployments)
    # `bandit: default` is Thompson sampling, `bandit: linucb` the contextual bandit over the
    # request's shape, `bandit: linucb_scored` the same plus the classifier's P(ok) per arm (the policy
    # names the scorer: `context_scorer`); all share their statistics through the bandit store.
    plugins = Plugins(scorers={}, bandits={"default": ThompsonBandit(), "linucb": LinUCBBandit(),
                                           "linucb_scored": ScoredLinUCBBandit()})
    # The config seeds the learned slots; an artifact activated through the admin API (any process,
    # recorded in the database) replaces it at start and on every sync (service/artifact_slots.py).
    plugins.verifiers = {}
    artifacts = ArtifactSlots(engine, plugins, settings.router.model_aliases, settings.router.artifacts_dir)
    if settings.router.artifact:
        artifacts.seed(slot_name("scorer", "default"), settings.router.artifact)
    for name, path in settings.router.verifiers.items():
        artifacts.seed(slot_name("verifier", name), path)
    catalog = Catalog(deployments, backends)
    # With Redis, policy changes are pushed to every process (pub/sub) on top of store polling.
    policy_events = (RedisPolicyEvents(redis_client, channel=f"{settings.redis_prefix}policies")
                     if redis_client is not None else None)
    key_events = key_change_events(settings, redis_client) if redis_client is not None else None
    router = GatewayRouter(
        catalog,
        PolicyRegistry(DbPolicyStore(engine), notifier=policy_events),
        breakers, budgets, ratelimits, metrics,
        plugins=plugins,
        bandit_store=bandit_store,
        scope_budgets=config_limits(settings.budgets),
        scope_store=ScopeBudgetStore(engine),
        local_load=lambda: engine_load(backends) | remote_load.latest,
    )
    metrics.set_names(label_names(catalog, router.registry))
    executor = Executor(pricer=catalog.cost, outcomes=router)
    return Services(
        settings=settings,
        engine=engine,
        sink=sink,
        keys=KeyStore(engine, notifier=key_events),
        metrics=metrics,
        router=router,
        executor=executor,
        backends=backends,
        redis=redis_client,
        remote_load=remote_load,
        policy_events=policy_events,
        artifacts=artifacts,
        feedback=FeedbackRecorder(engine, sink, router, max_sources=settings.feedback_max_sources),
        cascades=Cascades(executor, catalog, plugins, metrics),
        key_events=key_events,
        # several workers without Redis: the start's warning said it once; siblings seen add nothing
        heartbeat=Heartbeat(engine, shared_state=redis_client is not None,
                            warned=unshared_workers_warning(settings) is not None),
    )


async def _close_backends(services: Services) -> None:
    """Close every backend (a local model's engine or server process) and the database engine."""
    for b in services.backends.values():
        with contextlib.suppress(Exception):
            await b.aclose()
    await services.engine.dispose()


def create_app(settings: Settings, backends: dict[str, Backend] | None = None, *,
               checked: AppChecks | None = None) -> Starlette:
    """The gateway as an ASGI app, for `hybridgate serve` (through `app_from_env`) or for embedding.

    Embedding it is as safe as `serve`: a deployment no backend can be built from (no api_base, a
    checkpoint that is not one, a local-model device this machine's torch cannot use) is a ConfigError
    here, and the app's startup (its lifespan, before anything is served or seeded) runs serve's
    preflight (`gateway.preflight.check_app`): a `policies_dir` that is missing or holds an invalid
    policy, a log database that answers but is not migrated, a `default_model` that names nothing are
    a ConfigError that fails the startup; its warnings (an unreachable database: the app starts
    degraded) go to the ``hybridgate`` logger. Those checks read only what startup reads anyway (the
    policy files, the log database), on the app's own engine. ``checked``: the outcome of those checks
    where its caller already ran them and reported their warnings (`serve`, before it started the
    server), so startup does not run them again."""
    services = build_services(settings, backends)
    oa = OpenAIHandlers(services)
    admin = AdminHandlers(services)
    budget_admin = BudgetAdminHandlers(services)
    fb = FeedbackHandler(services)
    console = Console(services, SessionRevocationStore(services.engine))
    stored = StoredResponseHandlers(oa.responses_store, services.keys, settings.keys_required)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if checked is None:
            try:
                checks = await check_app(settings, services.engine)
            except BaseException:
                await _close_backends(services)  # nothing else is running yet
                raise
            for warning in checks.warnings:
                log.warning("hybridgate: %s", warning)
        else:
            checks = checked
        await services.sink.start()
        registry = services.router.registry
        router = services.router
        artifacts = services.artifacts
        # A database the checks could not reach is not asked again here (each try would wait out its
        # timeout): the check's warning said so, and the background jobs below load it once it answers.
        if checks.database_reachable:
            try:
                await registry.reload()
                if settings.policies_dir:
                    await registry.seed_dir(settings.policies_dir)
                if services.router.catalog.deployments and registry.active("auto") is None:
                    await registry.seed_dir(DEFAULT_POLICIES)  # the embedded default policy, once
            except Exception as exc:  # a dead database must not stop the gateway serving plain models
                log.warning("hybridgate: policies not loaded (%s); retrying in the background", error_text(exc))
            await artifacts.sync()  # what was activated before this process started
        stop = asyncio.Event()
        events = services.policy_events
        tasks: list[asyncio.Task[Any]] = []
        if events is not None:
            # Reload at once on another process's change; polling below relaxes while this is live.
            tasks.append(asyncio.create_task(events.run(registry.reload, stop)))
        key_events = services.key_events
        if key_events is not None:
            tasks.append(asyncio.create_task(key_events.run(services.keys.invalidate, stop)))
        heartbeat = services.heartbeat
        tasks.append(asyncio.create_task(_every(10.0, stop, ("heartbeat", heartbeat.beat))))
        tasks.append(asyncio.create_task(registry.run_reload_loop(
            settings.policy_reload_s, stop, pushed=(lambda: events.live) if events is not None else None)))
        # Keep this process in step with every other one: what the bandits learned, budgets, and the
        # console sessions signed out of.
        tasks.append(asyncio.create_task(_every(
            settings.policy_reload_s, stop, ("bandit sync", router.sync_bandits),
            ("budget sync", router.scopes.sync),
            ("artifact sync", artifacts.sync),
            ("console sign-out sync", console.sessions.sync))))
        tasks.append(asyncio.create_task(_every(
            settings.budget_reconcile_s, stop, ("budget reconcile", router.budgets.reconcile))))
        # Leases and holds of running requests stay alive; releases Redis missed are retried (and the
        # give-backs of breaker probe slots, so a probe that ended during an outage does not keep its
        # deployment un-probeable until the probe timeout).
        tasks.append(asyncio.create_task(_every(
            0.5, stop, ("lease upkeep", router.ratelimits.maintain), ("budget hold upkeep", router.budgets.maintain),
            ("breaker probe upkeep", router.breakers.maintain))))
        tasks.append(asyncio.create_task(services.remote_load.run(settings.policy_reload_s, stop)))
        if settings.log.retention_days is not None:
            tasks.append(asyncio.create_task(_every(
                3600.0, stop, ("log retention", functools.partial(_prune_log, services.engine, settings.log.retention_days)))))
        # Everything built so far lives as long as the process: keep it out of the cyclic GC's scans,
        # which otherwise show up as latency spikes (p99) under load.
        gc.collect()
        gc.freeze()
        if not checks.start_warned:
            for warning in start_warnings(settings):
                log.warning("hybridgate: %s", warning)
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                await heartbeat.leave()
            await services.sink.aclose()
            await _close_backends(services)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        """Ready = able to serve. A dead database or Redis degrades (rows spool to disk, state goes
        local) without making the gateway unready; the body says which dependency is down."""
        check_observer(request, settings)
        checks: dict[str, Any] = {"database": await services.sink.ping(), "log_spool": services.sink.stats()}
        redis_client = services.redis
        if redis_client is not None:
            try:
                checks["redis"] = bool(await asyncio.wait_for(redis_client.ping(), 1.0))
            except Exception:
                checks["redis"] = False
        degraded = not checks["database"] or checks.get("redis") is False
        return Response(orjson.dumps({"status": "degraded" if degraded else "ready", "checks": checks}),
                        media_type="application/json")

    async def metrics(request: Request) -> Response:
        check_observer(request, settings)
        st = services.sink.stats()
        services.metrics.log_queue.set(st.get("queued", 0))
        services.metrics.log_spooled.set(st.get("spooled_pending", st.get("spooled", 0)))
        services.metrics.db_up.set(1 if st.get("db_up") else 0)
        services.metrics.log_totals.set(st)
        return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")

    doc = orjson.dumps(openapi_document())

    async def openapi(request: Request) -> Response:
        return Response(doc, media_type="application/json")

    def v1(endpoint: Endpoint) -> Endpoint:
        return endpoint if settings.keys_required else host_checked(endpoint, services)

    routes = [
        # Starlette tries routes in order: the three generation endpoints come first.
        Route("/v1/chat/completions", v1(oa.chat), methods=["POST"]),
        Route("/v1/responses", v1(oa.responses), methods=["POST"]),
        Route("/v1/messages", v1(oa.messages), methods=["POST"]),
        Route("/v1/completions", v1(oa.completions), methods=["POST"]),
        Route("/v1/embeddings", v1(oa.embeddings), methods=["POST"]),
        Route("/v1/models", v1(oa.models), methods=["GET"]),
        Route("/v1/responses/{response_id}", v1(stored.get), methods=["GET"]),
        Route("/v1/responses/{response_id}", v1(stored.delete), methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", v1(stored.input_items), methods=["GET"]),
        Route("/v1/messages/count_tokens", v1(oa.count_tokens), methods=["POST"]),
        Route("/v1/feedback", v1(fb.post), methods=["POST"]),
        Route("/v1/models/{model:path}", v1(oa.model), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *database_guarded([*admin.routes(), *budget_admin.routes(), *console.routes()]),
    ]

    def admin_headers(request: Request) -> dict[str, str] | None:
        """An error under /admin is an admin answer: not cached, not sniffed, as the answers themselves
        (`ADMIN_HEADERS`). Decided per error, so the data plane's answers pass through nothing more."""
        path = request.url.path
        return ADMIN_HEADERS if path == "/admin" or path.startswith("/admin/") else None

    async def api_error(request: Request, exc: Exception) -> Response:
        """An error no handler shaped itself (e.g. a key lookup's 503 in `host_checked`), in the shape of
        the API the path belongs to."""
        assert isinstance(exc, APIError)
        if is_messages_path(request.url.path):
            return anthropic_error(exc)
        return exc.response(admin_headers(request))

    async def http_error(request: Request, exc: Exception) -> Response:
        """Unknown paths and wrong methods, in the error shape of the API the path belongs to (a 405
        keeps the router's `Allow` header)."""
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {404: f"Unknown request URL: {request.method} {request.url.path}. Please check the URL for "
                        "typos, or see the API reference at /openapi.json.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}.get(
            exc.status_code, str(exc.detail))
        err = APIError(exc.status_code, message, code=code, headers=dict(exc.headers or {}))
        headers = {"x-request-id": uuid.uuid4().hex} | (admin_headers(request) or {})
        if is_messages_path(request.url.path):
            return anthropic_error(err, headers)
        return err.response(headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return internal_error().response(admin_headers(request))

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error},
    )
    app.state.services = services
    app.state.console_sessions = console.sessions
    return app


def app_from_env() -> Starlette:
    """Uvicorn factory (`gateway.app:app_from_env`): settings from HYBRIDGATE_CONFIG and env. Under
    `serve`, which loaded the same settings and ran the checks before it started the server, neither
    the checks nor the settings' warnings are repeated (`preflight.checked_by_serve`)."""
    from gateway.config import load_settings

    checked = checked_by_serve()
    try:
        return create_app(load_settings(warn_unknown_env=checked is None), checked=checked)
    except ConfigError as exc:
        # uvicorn calls this factory in each worker: a configuration mistake is one line and
        # uvicorn's startup-failure status (which also stops a multi-worker parent), not a traceback.
        print(f"hybridgate: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
