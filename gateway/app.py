"""The app factory: builds every part from Settings and wires them into one Starlette app.

No module-level state: tests build as many apps as they like, each with its own database,
sink, metrics registry and backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends.base import Backend
from backends.executor import Executor
from backends.registry import build_backend
from gateway.admin_api import AdminHandlers
from gateway.artifact_slots import ArtifactSlots, slot_name
from gateway.budget_admin import BudgetAdminHandlers
from gateway.config import Settings
from gateway.errors import APIError
from gateway.feedback_api import FeedbackHandler
from gateway.keys import KeyStore
from gateway.metrics import Metrics
from gateway.openai_api import OpenAIHandlers
from gateway.openapi import openapi_document
from gateway.remote_load import RemoteLoadPoller
from gateway.routing import Catalog, GatewayRouter
from gateway.services import Services
from policies.db_store import DbPolicyStore
from policies.registry import PolicyRegistry
from requestlog.retention import cutoff, prune
from requestlog.sink import LogSink
from requestlog.spend import LoggedSpend
from router.breaker import BreakerConfig
from router.budget import BudgetLimit
from router.plugins import LinUCBBandit, ScoredLinUCBBandit, ThompsonBandit
from router.protocols import Plugins
from router.signals import LocalLoad
from state.bandits import BanditStore, DbBanditStore, InProcessBanditStore, RedisBanditStore
from state.breakers import BreakerStore, InProcessBreakerStore, RedisBreakerStore
from state.budget_reconcile import SpendReconciler
from state.budgets import BudgetStore, InProcessBudgetStore, RedisBudgetStore
from state.policy_events import RedisPolicyEvents
from state.ratelimits import InProcessRateLimitStore, RateLimitStore, RedisRateLimitStore
from state.redis_util import make_redis
from state.scope_budgets import ScopeBudgetStore

log = logging.getLogger("hybridgate")
DEFAULT_POLICIES = Path(__file__).resolve().parents[1] / "policies" / "defaults"


def build_state(settings: Settings, engine: AsyncEngine) -> tuple[BreakerStore, BudgetStore, RateLimitStore,
                                                                BanditStore, Any]:
    """Shared state: Redis when configured (every process sees one state), else in-process. Bandit
    statistics change only on feedback and are worth keeping, so by default they live in the
    database, durable across restarts of Redis and of the gateway."""
    b = settings.breaker
    cfg = BreakerConfig(window_s=b.window_s, min_requests=b.min_requests, error_rate=b.error_rate,
                        consecutive_failures=b.consecutive_failures, latency_ms=b.latency_ms,
                        cooldown_s=b.cooldown_s, half_open_probes=b.half_open_probes)
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
        return (RedisBreakerStore(client, prefix=p, config=cfg), RedisBudgetStore(client, prefix=p, reconciler=spend),
                RedisRateLimitStore(client, prefix=p), bandits, client)
    return InProcessBreakerStore(cfg), InProcessBudgetStore(reconciler=spend), InProcessRateLimitStore(), bandits, None


async def _every(interval_s: float, stop: asyncio.Event, *jobs: tuple[str, Callable[[], Awaitable[Any]]]) -> None:
    """Run each job now and then every ``interval_s`` until ``stop``. A failing job is logged and
    tried again next round (a store hiccup must never end the loop), and never stops the others."""
    while not stop.is_set():
        for what, job in jobs:
            try:
                await job()
            except Exception as exc:
                log.warning("%s failed: %s", what, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


async def _sync_admin_budgets(router: GatewayRouter, budgets: ScopeBudgetStore) -> None:
    """User and team budgets set through the admin API by any process (the last read is kept while
    the database is away)."""
    router.set_admin_budgets(await budgets.load())


async def _prune_log(engine: AsyncEngine, days: float) -> None:
    """Log retention. Every worker runs it; the deletes are idempotent and batched, so overlapping
    runs only repeat an empty query."""
    pruned = await prune(engine, cutoff(datetime.now(UTC), days))
    if pruned.requests:
        log.info("log retention: deleted %s", pruned.as_dict())


def _local_load(backends: dict[str, Backend]) -> dict[str, LocalLoad]:
    """The local engines' queue depth and free slots, for the router's signals snapshot."""
    out = {}
    for name, b in backends.items():
        signals = getattr(b, "load_signals", None)
        if signals is not None:
            sig = signals()
            out[name] = LocalLoad(queue_depth=int(sig.get("queue_depth", 0)), free_slots=sig.get("free_slots"))
    return out


def build_services(settings: Settings, backends: dict[str, Backend] | None = None) -> Services:
    engine = create_async_engine(settings.database_url, pool_pre_ping=True)
    sink = LogSink(
        settings.database_url,  # its own small pool: log writes never queue behind admin queries
        spool_dir=settings.log.spool_dir,
        batch_max_rows=settings.log.batch_max_rows,
        batch_max_ms=settings.log.batch_max_ms,
    )
    deployments = settings.all_deployments()
    backends = dict(backends or {})
    for d in deployments:
        if d.name not in backends:
            backends[d.name] = build_backend(d)
    metrics = Metrics()
    breakers, budgets, ratelimits, bandit_store, redis_client = build_state(settings, engine)
    remote_load = RemoteLoadPoller(deployments)
    # `bandit: default` is Thompson sampling, `bandit: linucb` the contextual bandit over the
    # request's shape, `bandit: linucb_scored` the same plus the classifier's P(ok) per arm (the policy
    # names the scorer: `context_scorer`); all share their statistics through the bandit store.
    plugins = Plugins(scorers={}, bandits={"default": ThompsonBandit(), "linucb": LinUCBBandit(),
                                           "linucb_scored": ScoredLinUCBBandit()})
    # The config seeds the learned slots; an artifact activated through the admin API (any process,
    # recorded in the database) replaces it at start and on every sync (gateway/artifact_slots.py).
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
    router = GatewayRouter(
        catalog,
        PolicyRegistry(DbPolicyStore(engine), notifier=policy_events),
        breakers, budgets, ratelimits, metrics,
        plugins=plugins,
        bandit_store=bandit_store,
        scope_budgets={b.scope: BudgetLimit(b.scope, b.limit_usd, b.period) for b in settings.budgets},
        local_load=lambda: _local_load(backends) | remote_load.latest,
    )
    return Services(
        settings=settings,
        engine=engine,
        sink=sink,
        keys=KeyStore(engine),
        metrics=metrics,
        router=router,
        executor=Executor(pricer=catalog.cost, outcomes=router),
        backends=backends,
        extras={"redis": redis_client, "remote_load": remote_load, "policy_events": policy_events,
                "scope_budgets": ScopeBudgetStore(engine), "artifacts": artifacts},
    )


def create_app(settings: Settings, backends: dict[str, Backend] | None = None) -> Starlette:
    services = build_services(settings, backends)
    oa = OpenAIHandlers(services)
    admin = AdminHandlers(services)
    budget_admin = BudgetAdminHandlers(services)
    fb = FeedbackHandler(services)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.sink.start()
        registry = services.router.registry
        try:
            await registry.reload()
            if settings.policies_dir:
                await registry.seed_dir(settings.policies_dir)
            if services.router.catalog.deployments and registry.active("auto") is None:
                await registry.seed_dir(DEFAULT_POLICIES)  # the embedded default policy, once
        except Exception as exc:  # a dead database must not stop the gateway serving plain models
            log.warning("hybridgate: policies not loaded (%s); retrying in the background", exc)
        stop = asyncio.Event()
        events: RedisPolicyEvents | None = services.extras["policy_events"]
        tasks: list[asyncio.Task[Any]] = []
        if events is not None:
            # Reload at once on another process's change; polling below relaxes while this is live.
            tasks.append(asyncio.create_task(events.run(registry.reload, stop)))
        tasks.append(asyncio.create_task(registry.run_reload_loop(
            settings.policy_reload_s, stop, pushed=(lambda: events.live) if events is not None else None)))
        # Keep this process in step with every other one: what the bandits learned, and budgets.
        router = services.router
        artifacts: ArtifactSlots = services.extras["artifacts"]
        await artifacts.sync()  # what was activated before this process started
        tasks.append(asyncio.create_task(_every(
            settings.policy_reload_s, stop, ("bandit sync", router.sync_bandits),
            ("budget sync", functools.partial(_sync_admin_budgets, router, services.extras["scope_budgets"])),
            ("artifact sync", artifacts.sync))))
        tasks.append(asyncio.create_task(_every(
            settings.budget_reconcile_s, stop, ("budget reconcile", router.budgets.reconcile))))
        tasks.append(asyncio.create_task(services.extras["remote_load"].run(settings.policy_reload_s, stop)))
        if settings.log.retention_days is not None:
            tasks.append(asyncio.create_task(_every(
                3600.0, stop, ("log retention", functools.partial(_prune_log, services.engine, settings.log.retention_days)))))
        # Everything built so far lives as long as the process: keep it out of the cyclic GC's scans,
        # which otherwise show up as latency spikes (p99) under load.
        gc.collect()
        gc.freeze()
        if not settings.keys_required:
            log.warning(
                "hybridgate: accepting requests WITHOUT gateway API keys (bound to loopback %s). "
                "Bind to another address or set require_keys: true to enforce keys.", settings.host)
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            await services.sink.aclose()
            for b in services.backends.values():
                with contextlib.suppress(Exception):
                    await b.aclose()
            await services.engine.dispose()

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        """Ready = able to serve. A dead database or Redis degrades (rows spool to disk, state goes
        local) without making the gateway unready; the body says which dependency is down."""
        checks: dict[str, Any] = {"database": await services.sink.ping(), "log_spool": services.sink.stats()}
        redis_client = services.extras.get("redis")
        if redis_client is not None:
            try:
                checks["redis"] = bool(await asyncio.wait_for(redis_client.ping(), 1.0))
            except Exception:
                checks["redis"] = False
        degraded = not checks["database"] or checks.get("redis") is False
        return Response(orjson.dumps({"status": "degraded" if degraded else "ready", "checks": checks}),
                        media_type="application/json")

    async def metrics(request: Request) -> Response:
        st = services.sink.stats()
        services.metrics.log_queue.set(st.get("queued", 0))
        services.metrics.log_spooled.set(st.get("spooled_pending", st.get("spooled", 0)))
        services.metrics.db_up.set(1 if st.get("db_up") else 0)
        return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")

    doc = orjson.dumps(openapi_document())

    async def openapi(request: Request) -> Response:
        return Response(doc, media_type="application/json")

    routes = [
        Route("/v1/chat/completions", oa.chat, methods=["POST"]),
        Route("/v1/completions", oa.completions, methods=["POST"]),
        Route("/v1/embeddings", oa.embeddings, methods=["POST"]),
        Route("/v1/models", oa.models, methods=["GET"]),
        Route("/v1/feedback", fb.post, methods=["POST"]),
        Route("/v1/models/{model:path}", oa.model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *admin.routes(),
        *budget_admin.routes(),
    ]

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(exc.status_code, str(exc.detail), code=code).response()

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return APIError(500, "The server had an error while processing your request.", type="server_error").response()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error},
    )
    app.state.services = services
    return app


def app_from_env() -> Starlette:
    """Uvicorn factory (`gateway.app:app_from_env`): settings from HYBRIDGATE_CONFIG and env."""
    from gateway.config import load_settings

    return create_app(load_settings())
