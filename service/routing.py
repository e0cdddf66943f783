"""The request service around the pure router: what happens to a request between HTTP and upstreams.

Per request it: checks rate limits and concurrency caps, gathers the signals snapshot (breaker
states, latency EWMA, in-flight counts, budgets, local-model load), calls `router.decide` for a
policy name (or resolves a plain model name to its deployments), reserves the worst-case cost
against the caller's budgets, and hands the executor a `Plan`. When the request ends it commits
the real cost, releases what it held, and remembers the decision so feedback can reach bandits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from backends.base import HEALTH_NEUTRAL, Backend, Usage
from backends.pricing import resolve_prices, with_cost_map_limits
from common.types import DeploymentConfig, RequestFeatures
from policies.registry import PolicyRegistry
from policies.schema import Policy
from requestlog.rows import RequestRow
from router.breaker import Admission
from router.budget import BudgetExceeded, BudgetLimit, Reservation, worst_case_usd
from router.calibrate import Calibration, calibrate_cost_weight, memoized
from router.decide import (
    bandit_context,
    decide,
    largest_context_window,
    policy_context_window,
    unknown_targets,
)
from router.decision import Decision
from router.protocols import Plugins, SharedBandit
from router.ratelimit import RateLimit
from router.signals import LocalLoad, Signals
from service.budgets import ScopeBudgets
from service.errors import Refused
from service.executor import DEFAULT_TRIGGERS, NO_DEPLOYMENT_RETRY_S, Plan, Target
from service.metrics import Metrics
from state.bandits import BanditStore, InProcessBanditStore
from state.breakers import BreakerStore
from state.budgets import BudgetStore
from state.live import InFlight, LatencyTracker
from state.ratelimits import RateLimitStore
from state.scope_budgets import ScopeBudgetStore


class KeyLimits(Protocol):
    """What the service reads of a caller's API key: its id and the limits set on it."""

    @property
    def id(self) -> str: ...
    @property
    def budget_usd(self) -> float | None: ...
    @property
    def budget_period(self) -> str | None: ...
    @property
    def rpm_limit(self) -> int | None: ...
    @property
    def tpm_limit(self) -> int | None: ...
    @property
    def max_concurrency(self) -> int | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def team(self) -> str | None: ...


@dataclass(slots=True)
class Route:
    plan: Plan
    public_model: str  # the name the client asked for
    policy: str | None = None
    policy_version: int | None = None
    reason: str = "direct"
    propensity: float = 1.0
    decision: Decision | None = None
    bandit_context: dict[str, Any] | None = None
    reservation: Reservation | None = None
    budget_limits: list[BudgetLimit] = field(default_factory=list)
    rate_limits: list[RateLimit] = field(default_factory=list)
    slot: tuple[str, str] | None = None  # (scope, lease id) of a concurrency cap
    charged_tokens: int = 0  # tokens charged against tokens/min limits before the call

    @property
    def targets(self) -> list[Target]:
        return self.plan.targets

    @property
    def chosen(self) -> DeploymentConfig | None:
        """The router's first choice: the policy's primary candidate (what ``propensity`` is the
        probability of), or a plain model's first deployment. Logged as the request's action for
        off-policy evaluation, whichever deployment ends up answering."""
        if self.decision is not None and self.decision.primary is not None:
            return self.decision.primary
        return self.plan.targets[0].deployment if self.plan.targets else None


@dataclass(slots=True, frozen=True)
class PendingReward:
    """What a bandit needs to learn from feedback on one of its decisions.

    The same values go to the request's log row (``bandit`` column, `as_logged`), so feedback that
    reaches another process, or this one after a restart, still teaches the bandit that decided.
    """

    bandit: str
    arm: str
    context: dict[str, Any]
    propensity: float

    def as_logged(self) -> dict[str, Any]:
        return {"name": self.bandit, "arm": self.arm, "context": self.context, "propensity": self.propensity}

    @classmethod
    def from_logged(cls, logged: Any) -> PendingReward | None:
        """Back from a log row's ``bandit`` value; None when it is missing or not ours."""
        if not isinstance(logged, dict) or not isinstance(logged.get("name"), str) \
                or not isinstance(logged.get("arm"), str):
            return None
        ctx = logged.get("context")
        return cls(logged["name"], logged["arm"], ctx if isinstance(ctx, dict) else {},
                   float(logged.get("propensity") or 1.0))


class LearningClock:
    """Per bandit, how many times this process learned and how many store writes are in flight, so
    a sync replaces the local bandit with shared totals only if nothing was learned while it read.

    Why: totals read while a local update's store write has not landed lack that update; applying
    them undoes it until the next sync. Counting updates alone missed the case where the write was
    still in flight when the sync checked (a gateway test counted 12 of 13 updates under CPU load).
    """

    def __init__(self) -> None:
        self._ticks: dict[str, int] = {}
        self._writing: dict[str, int] = {}

    def tick(self, name: str) -> None:
        self._ticks[name] = self._ticks.get(name, 0) + 1

    @contextlib.asynccontextmanager
    async def writing(self, name: str) -> AsyncIterator[None]:
        """Around a store write of what was learned; ends with a tick, so a sync that read meanwhile
        sees the clock move even when the write finished before its check."""
        self._writing[name] = self._writing.get(name, 0) + 1
        try:
            yield
        finally:
            self._writing[name] -= 1
            self.tick(name)

    def mark(self, name: str) -> int:
        return self._ticks.get(name, 0)

    def quiet_since(self, name: str, mark: int) -> bool:
        """Nothing learned since ``mark`` and no write in flight: totals read after ``mark`` are whole."""
        return not self._writing.get(name) and self._ticks.get(name, 0) == mark


class Catalog:
    """Deployments and their backends, indexed by public model name (config order = fallback order).

    A deployment's context window and output limit that its config leaves unset come from litellm's cost
    map (`with_cost_map_limits`), resolved here once, like its prices, so routing, budgets, fallbacks and
    /v1/models all read the same numbers."""

    def __init__(self, deployments: list[DeploymentConfig], backends: dict[str, Backend]) -> None:
        deployments = [with_cost_map_limits(d) for d in deployments]
        self.deployments = deployments
        self.backends = backends
        self.by_name = {d.name: d for d in deployments}
        self.by_model: dict[str, list[DeploymentConfig]] = {}
        for d in deployments:
            self.by_model.setdefault(d.model, []).append(d)
        self.prices = {d.name: resolve_prices(d) for d in deployments}

    def price(self, d: DeploymentConfig) -> tuple[float, float]:
        p = self.prices.get(d.name)
        return (p.input_per_mtok, p.output_per_mtok) if p is not None else (0.0, 0.0)

    def cost(self, d: DeploymentConfig, usage: Usage) -> float:
        """USD for `usage` on `d`, from the prices resolved once at start (the executor's pricer)."""
        p = self.prices.get(d.name)
        return p.cost(usage) if p is not None else resolve_prices(d).cost(usage)

    def targets(self, deployments: list[DeploymentConfig]) -> list[Target]:
        return [Target(d, self.backends[d.name]) for d in deployments if d.name in self.backends]


def limits_for(key: KeyLimits | None, features: RequestFeatures | None = None,
               scope_budgets: Mapping[str, BudgetLimit] | None = None) -> tuple[list[BudgetLimit], list[RateLimit]]:
    """Budgets (key, and configured user/team ones) and rate limits that apply to a request.

    A key's bound user and team always count; a `user` named in the body only adds its own
    budget (it narrows what the request may spend, never replaces the key's)."""
    budgets: list[BudgetLimit] = []
    if scope_budgets:
        scopes = dict.fromkeys(
            f"{kind}:{name}" for kind, name in (
                ("user", key.user if key else None), ("team", key.team if key else None),
                ("user", features.user if features else None), ("team", features.team if features else None),
                ("user", features.end_user if features else None)) if name)
        budgets += [scope_budgets[s] for s in scopes if s in scope_budgets]
    if key is None:
        return budgets, []
    if key.budget_usd is not None:
        budgets.append(BudgetLimit(f"key:{key.id}", key.budget_usd, key.budget_period or "month"))  # type: ignore[arg-type]
    rates = []
    if key.rpm_limit or key.tpm_limit:
        rates.append(RateLimit(f"key:{key.id}", requests_per_min=key.rpm_limit, tokens_per_min=key.tpm_limit))
    return budgets, rates


class GatewayRouter:
    """Routes requests and implements the executor's `Outcomes` (breakers, latency, in-flight)."""

    def __init__(
        self,
        catalog: Catalog,
        registry: PolicyRegistry,
        breakers: BreakerStore,
        budgets: BudgetStore,
        ratelimits: RateLimitStore,
        metrics: Metrics,
        plugins: Plugins | None = None,
        local_load: Callable[[], Mapping[str, LocalLoad]] | None = None,
        rng: random.Random | None = None,
        bandit_store: BanditStore | None = None,
        scope_budgets: Mapping[str, BudgetLimit] | None = None,
        scope_store: ScopeBudgetStore | None = None,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.breakers = breakers
        self.budgets = budgets
        self.ratelimits = ratelimits
        self.metrics = metrics
        self.plugins = plugins or Plugins()
        self.local_load = local_load
        self.bandit_store: BanditStore = bandit_store or InProcessBanditStore()
        self.scopes = ScopeBudgets(scope_budgets, scope_store)
        self.latency = LatencyTracker()
        self.in_flight = InFlight()
        self.rng = rng or random.Random()
        # Bandit decisions awaiting feedback: only what `update` needs, only for bandit routes, bounded.
        self._pending: OrderedDict[str, PendingReward] = OrderedDict()
        self._pending_max = 20_000
        self._learning = LearningClock()  # so a sync never undoes a local update
        self._created = 1_700_000_000

    # ---- executor Outcomes -------------------------------------------------------------------

    async def allow(self, deployment: str) -> Admission:
        return await self.breakers.allow(deployment)

    async def record(
        self, deployment: str, ok: bool, latency_s: float, error_kind: str | None, probe: str | None
    ) -> None:
        # A full local queue answers at once: that time is no sample of how fast the deployment answers.
        if error_kind != "overloaded":
            self.latency.observe(deployment, latency_s * 1000)
        # Client-caused errors (bad request, unknown model, context window) say nothing about the
        # upstream's health, nor does a local engine's full queue (busy, not broken): not counted, but a
        # half-open probe slot the attempt took is given back.
        if error_kind in HEALTH_NEUTRAL:
            await self.breakers.release(deployment, probe)
            return
        state = await self.breakers.record(deployment, ok, latency_s * 1000, probe)
        self.metrics.breaker_open.labels(deployment).set(1 if state == "open" else 0)

    async def release(self, deployment: str, probe: str | None) -> None:
        await self.breakers.release(deployment, probe)

    async def retry_after_s(self, deployments: list[str]) -> float:
        """Retry-After for a request refused because none of ``deployments`` admits traffic: the time
        until the first of their breakers goes half-open, at least 1 s (a breaker stays open for its whole
        cooldown, so an earlier retry is refused again; the header rounds up to whole seconds). When none
        of them will on its own (forced open) or none is named, the default wait."""
        waits = [w for w in (await self.breakers.seconds_until_half_open(deployments)).values() if w is not None]
        return max(1.0, min(waits)) if waits else NO_DEPLOYMENT_RETRY_S

    def started(self, deployment: str) -> None:
        self.in_flight.start(deployment)

    def finished(self, deployment: str) -> None:
        self.in_flight.finish(deployment)

    # ---- routing -----------------------------------------------------------------------------

    async def signals(self, deployments: list[DeploymentConfig], budget_limits: list[BudgetLimit]) -> Signals:
        names = [d.name for d in deployments]
        breakers = await self.breakers.states(names)
        budgets = await self.budgets.snapshot(budget_limits) if budget_limits else {}
        return Signals(
            breakers=breakers,
            latency_ms=self.latency.snapshot(),
            in_flight=self.in_flight.snapshot(),
            budgets=budgets,
            local_load=self.local_load() if self.local_load else {},
            prices={d.name: self.catalog.price(d) for d in deployments},
        )

    async def route(self, model: str, features: RequestFeatures, key: KeyLimits | None,
                    now: datetime | None = None) -> Route | None:
        """The route for a request, None for an unknown model; raises `Refused` on limits and budgets."""
        policy = self.registry.active(model)
        direct = self.catalog.by_model.get(model)
        if policy is None and not direct:
            return None
        budget_limits, rate_limits = limits_for(key, features, self.scopes.limits)
        charged = features.prompt_tokens + (features.max_tokens or 0) * max(1, features.choices)
        if rate_limits:
            rd = await self.ratelimits.hit(rate_limits, charged)
            if not rd.allowed:
                raise Refused("rate_limit_exceeded", f"Rate limit reached for {rd.scope} ({rd.kind} per minute).",
                              retry_after_s=rd.retry_after_s)
        slot = None
        if key is not None and key.max_concurrency:
            scope = f"key:{key.id}"
            lease = await self.ratelimits.acquire_slot(scope, key.max_concurrency)
            if lease is None:
                raise Refused("concurrency_limit_exceeded", f"Too many concurrent requests for {scope}.",
                              retry_after_s=0.5)
            slot = (scope, lease)
        try:
            if policy is not None:
                route = await self._route_policy(model, policy, features, budget_limits, now)
            else:
                route = await self._route_direct(model, direct or [], features)
            route.budget_limits, route.rate_limits, route.slot = budget_limits, rate_limits, slot
            route.charged_tokens = charged if rate_limits else 0
            if budget_limits and route.targets:
                await self._reserve(route, features)
        except BaseException:
            # Refused after the limits were charged (budget, no candidates, unsupported): nothing goes
            # upstream, so the lease is freed and the tokens/min estimate refunded; the request itself
            # still counts against requests/min.
            try:
                if slot is not None:
                    await self.ratelimits.release_slot(*slot)
            finally:
                if rate_limits and charged:
                    await self.ratelimits.adjust_tokens(rate_limits, -charged)
            raise
        return route

    async def _route_direct(self, model: str, deployments: list[DeploymentConfig],
                            features: RequestFeatures) -> Route:
        cap = features.endpoint
        usable = [d for d in deployments if cap in d.capabilities]
        if usable and features.max_tokens is not None:
            # An answer longer than any deployment can give is refused here, not left to hang an upstream.
            most = max(d.max_output_tokens or d.context_window for d in usable)
            if features.max_tokens > most:
                field = features.output_param
                raise Refused("output_too_long", f"{field} is too large: {features.max_tokens}. The model "
                                                 f"`{model}` supports at most {most} output tokens.", param=field)
        # The caller named the model, so a deployment that does not declare a capability the request
        # needs (tools, response_format, logprobs, images) may still serve it (capabilities default to
        # chat and completion; the upstream decides); those that declare every one are tried first.
        usable.sort(key=lambda d: not features.capabilities <= set(d.capabilities))
        states = await self.breakers.states([d.name for d in usable])
        ordered = [d for d in usable if states.get(d.name) != "open"] or usable
        return Route(plan=Plan(self.catalog.targets(ordered)), public_model=model,
                     reason=f"direct:{model}" + (f" ({len(ordered)} deployments)" if len(ordered) > 1 else ""))

    async def _route_policy(self, name: str, policy: Any, features: RequestFeatures,
                            budget_limits: list[BudgetLimit], now: datetime | None) -> Route:
        deployments = self.catalog.deployments
        now = now or datetime.now(UTC)
        signals = await self.signals(deployments, budget_limits)
        t0 = time.perf_counter()
        d = decide(features, policy, deployments, signals, self.rng, now, plugins=self.plugins)
        self.metrics.decision_time.labels(name).observe(time.perf_counter() - t0)
        if d.primary is not None:
            self.metrics.decisions.labels(name, d.primary.model).inc()
        if d.error == "budget_exceeded":
            raise Refused("budget_exceeded", "Budget exceeded for this key.")
        if d.error == "unsupported":
            raise _unsupported(name, d.reason, features)
        if d.error or not d.candidates:
            raise Refused("no_candidates", f"No deployment can serve policy `{name}` right now ({d.reason}).",
                          retry_after_s=await self.retry_after_s(list(d.open_breakers)))
        plan = Plan(self.catalog.targets(d.candidates), retry=d.retry, triggers=d.fallback_triggers or DEFAULT_TRIGGERS)
        ctx = bandit_context(features, now, name) if d.arm is not None else None
        if ctx is not None and d.scores is not None:  # the classifier's view the bandit decided with
            ctx["scores"] = dict(d.scores)
        return Route(plan=plan, public_model=name, policy=name, policy_version=self.registry.active_version(name),
                     reason=d.reason, propensity=d.propensity, decision=d, bandit_context=ctx)

    async def _reserve(self, route: Route, features: RequestFeatures) -> None:
        """Hold the worst case of the request as sent (`router.budget.worst_case_usd`: every choice,
        the output limit, the priciest candidate, a cascade's second answer) before any call, so
        concurrent requests can never overspend by more than one request's maximum cost."""
        esc = route.decision.escalation if route.decision is not None else None
        worst = worst_case_usd(features, [t.deployment for t in route.targets], esc.to if esc is not None else (),
                               price=self.catalog.price)
        try:
            route.reservation = await self.budgets.reserve(route.budget_limits, worst)
        except BudgetExceeded as exc:
            raise Refused("budget_exceeded", str(exc)) from None

    def finish(self, route: Route | None, row: RequestRow) -> Coroutine[Any, Any, None] | None:
        """Remember the decision for feedback; return the settling work (budget commit, lease
        release, token count correction) when there is any, for the caller to run."""
        if route is None:
            return None
        d = route.decision
        if d is not None and d.arm is not None and _arm_answered(d.arm, row):
            # The prompt stays out: it is logged only where the log's content mode allows, and the
            # shipped bandits learn from the request's shape, not its text.
            ctx = {k: v for k, v in (route.bandit_context or {}).items() if k != "prompt_text"}
            pending = PendingReward(d.bandit or "default", d.arm, ctx, route.propensity)
            row.bandit = pending.as_logged()
            self._pending[row.id] = pending
            if len(self._pending) > self._pending_max:
                self._pending.popitem(last=False)
        if route.reservation is None and route.slot is None and not route.rate_limits:
            return None
        return self._settle(route, row)

    async def _settle(self, route: Route, row: RequestRow) -> None:
        """Each step runs whatever the one before did: a failing commit never keeps a lease."""
        try:
            if route.reservation is not None:
                await self.budgets.commit(route.reservation, row.cost_usd or 0.0)
        finally:
            try:
                if route.slot is not None:
                    await self.ratelimits.release_slot(*route.slot)
            finally:
                if route.rate_limits:
                    # tokens/min were charged with the estimate up front; correct to the real count
                    estimate = (row.prompt_tokens or 0) + (row.completion_tokens or 0)
                    if route.charged_tokens and estimate != route.charged_tokens:
                        await self.ratelimits.adjust_tokens(route.rate_limits, estimate - route.charged_tokens)

    def recent_decision(self, request_id: str) -> PendingReward | None:
        return self._pending.get(request_id)

    async def feedback(self, request_id: str, score: float, logged: Any = None) -> None:
        """A quality signal arrived: the bandit that chose this request's model learns from it, here
        at once and, through the bandit store, in every other gateway process.

        ``logged`` is the request row's ``bandit`` value, for decisions this process does not hold
        (made by another process, or before a restart).
        """
        pending = self._pending.get(request_id) or PendingReward.from_logged(logged)
        if pending is None:
            return
        bandit = self.plugins.bandits.get(pending.bandit)
        if bandit is None:
            return
        name = pending.bandit
        bandit.update(pending.arm, score, pending.context, pending.propensity)
        self._learning.tick(name)
        if isinstance(bandit, SharedBandit):
            async with self._learning.writing(name):
                await self.bandit_store.add(name, pending.arm, bandit.increments(pending.arm, score, pending.context))

    @property
    def scope_budgets(self) -> dict[str, BudgetLimit]:
        """User and team limits in force (config and admin; `service.budgets.ScopeBudgets`)."""
        return self.scopes.limits

    def set_admin_budgets(self, limits: Mapping[str, BudgetLimit]) -> None:
        """User and team budgets from the admin API; they take precedence over the config file's."""
        self.scopes.set_admin(limits)

    async def sync_bandits(self) -> None:
        """Refresh every shareable bandit from the store's totals (no-op without a shared store)."""
        for name, bandit in self.plugins.bandits.items():
            if not isinstance(bandit, SharedBandit):
                continue
            mark = self._learning.mark(name)
            totals = await self.bandit_store.load(name)
            # Totals read while this process was learning may lack that update: apply them next time.
            if totals is not None and self._learning.quiet_since(name, mark):
                bandit.load_totals(totals)

    def model_cards(self) -> list[dict[str, Any]]:
        """OpenAI's model objects for every configured model and live policy, each with the context window it
        serves (`_card`)."""
        cards = [_card(m, self._created, ds[0].provider, largest_context_window(ds))
                 for m, ds in self.catalog.by_model.items()]
        for p in self.registry.list():
            policy = self.registry.active(p.name)
            if p.name not in self.catalog.by_model and policy is not None:  # a retired policy is not offered
                window = policy_context_window(policy, self.catalog.deployments)
                cards.append(_card(p.name, self._created, "hybridgate-policy", window))
        return cards

    # ---- admin: what a policy would do ------------------------------------------------------------

    def policy_warnings(self, policy: Policy) -> list[str]:
        """What an admin should hear about a valid ``policy`` before traffic follows it: targets that
        name no configured deployment, model or tag (allowed: a deployment may be added later, and a
        policy shared by environments may name another's), and a policy name that is also a configured
        model's, whose requests the policy then routes instead of the model's own deployments."""
        out: list[str] = []
        unknown = unknown_targets(policy, self.catalog.deployments)
        if unknown:
            out.append(f"no configured deployment, model or tag matches: {', '.join(unknown)}")
        if policy.name in self.catalog.by_model:
            out.append(f"{policy.name!r} is also a configured model: its requests follow this policy")
        return out

    async def simulate(
        self, name: str, features: RequestFeatures, policy: Policy | None = None
    ) -> Decision | None:
        """The decision the active policy ``name`` (or the draft ``policy``) makes for ``features`` now,
        without calling any provider or holding any budget; None when no such policy is active."""
        policy = policy or self.registry.active(name)
        if policy is None:
            return None
        signals = await self.signals(self.catalog.deployments, [])
        return decide(features, policy, self.catalog.deployments, signals, random.Random(0), datetime.now(UTC),
                      plugins=self.plugins)

    async def calibrate(self, name: str, requests: list[RequestFeatures], model: str, share: float) -> Calibration:
        """The cost weight of classifier policy ``name`` that sends about ``share`` of ``requests`` first
        to ``model`` (`router.calibrate`). Raises KeyError for no active policy, ValueError for a policy
        whose selector is not a classifier."""
        policy = self.registry.active(name)
        if policy is None:
            raise KeyError(name)
        plugins = memoized(self.plugins)
        for i, r in enumerate(requests):  # the real scorer runs here, on the event loop's thread, once per prompt
            for scorer in plugins.scorers.values():
                scorer.predict(r.prompt_text, r.metadata)
            if i % 64 == 63:
                await asyncio.sleep(0)
        signals = await self.signals(self.catalog.deployments, [])
        return await asyncio.to_thread(calibrate_cost_weight, policy, requests, self.catalog.deployments, signals,
                                       plugins, model, share, datetime.now(UTC))


def _arm_answered(arm: str, row: RequestRow) -> bool:
    """Whether feedback on this request may teach the bandit about ``arm`` (a model or deployment
    name): yes when the arm's deployment answered, or nothing did; no when a fallback (or a
    cascade's escalation) answered instead. Crediting the chosen arm with another model's answer
    would reward a failing deployment for every answer its fallback gave, and the bandit would
    send ever more traffic to it."""
    return row.deployment is None or arm in (row.served_model, row.deployment)


def _card(model: str, created: int, owned_by: str, context_window: int | None) -> dict[str, Any]:
    """One OpenAI model object. OpenAI's has no context length; the window is added under the names
    clients read it by (vLLM's ``max_model_len``, and ``context_window``): extra fields OpenAI's SDK keeps."""
    card: dict[str, Any] = {"id": model, "object": "model", "created": created, "owned_by": owned_by}
    if context_window is not None:
        card["max_model_len"] = card["context_window"] = context_window
    return card


# request capability -> (what a deployment lacks, the request parameter that asks for it)
_CAPABILITY_PARAM: dict[str, tuple[str, str]] = {
    "tools": ("supports tools", "tools"),
    "json_mode": ("supports structured output (response_format)", "response_format"),
    "logprobs": ("returns logprobs", "logprobs"),
    "vision": ("accepts images", "messages"),
}


def _unsupported(policy: str, reason: str, features: RequestFeatures) -> Refused:
    """The client's error for a request no deployment of ``policy`` can serve as sent (`decide`'s
    "unsupported": reason "capability:<cap>", "context:prompt" or "context:output"): it names the parameter
    that asks too much, in the caller's words (`RequestFeatures.prompt_param` / ``output_param``)."""
    if reason == "context:prompt":
        return Refused(
            "unsupported_request",
            f"No deployment of `{policy}` has a context window for this request's prompt "
            f"(~{features.prompt_tokens} tokens).",
            param=features.prompt_param,
        )
    if reason == "context:output":
        return Refused(
            "unsupported_request",
            f"No deployment of `{policy}` has a context window for this request "
            f"(~{features.prompt_tokens} prompt tokens plus an output limit of {features.max_tokens}).",
            param=features.output_param,
        )
    cap = reason.partition(":")[2]
    what, param = _CAPABILITY_PARAM.get(cap, (f"serves {cap} requests", "model"))
    return Refused("unsupported_request", f"No deployment of `{policy}` {what}.", param=param)
