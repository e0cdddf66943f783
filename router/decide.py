"""`decide`: filters → breakers → budget → rules → selector → fallbacks → escalation.

Pure: no I/O, no clock, no global randomness. The same call serves live traffic, the
``simulate`` admin endpoint, the benchmark and off-policy evaluation over logged rows.

Two candidate sets flow through the pipeline, as bitmasks over the deployment list:

* ``eligible``: may serve this request at all (filters, ``forbid`` rules, breakers). Fallbacks
  come from here, so a ``forbid`` (say, data residency) also binds the fallback chain.
* ``pool``: what the selector chooses among (eligible narrowed by ``avoid``/``restrict``/``tier``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from common.types import DeploymentConfig, RequestFeatures
from policies.schema import Policy, SelectorSpec, trigger_kinds
from router.compiled import CompiledPolicy, compiled_for
from router.decision import Decision, EscalationPlan, TraceStep
from router.protocols import NO_PLUGINS, Plugins
from router.rules import RuleContext
from router.selectors import Selection, SelectorInput, prepare, select
from router.signals import Signals


def decide(
    request: RequestFeatures,
    policy: Policy,
    deployments: Sequence[DeploymentConfig],
    signals: Signals,
    rng: random.Random,
    now: datetime,
    *,
    plugins: Plugins = NO_PLUGINS,
) -> Decision:
    """Route one request. Never raises for routing reasons: an impossible request comes back as a
    Decision with ``error`` set and no candidates: "unsupported" (the policy's deployments lack a capability
    the request needs, reason "capability:<cap>", or none has room for it, reason "context:prompt" when its
    prompt alone leaves no room to answer, else "context:output"; a client error), "no_candidates"
    (none available now, e.g. every breaker open) or "budget_exceeded".
    """
    cp = compiled_for(policy, deployments)
    trace: list[TraceStep] = []
    reasons: list[str] = []

    # 1. hard filters ---------------------------------------------------------------------------
    eligible = cp.allow_mask & ~cp.deny_mask
    if eligible != cp.all_mask:
        trace.append(TraceStep("filter", "allow/deny", cp.names_of(eligible)))
    caps = cp.base_caps | request.capabilities | {request.endpoint}
    for cap in sorted(caps):  # sorted: the trace must not depend on string hash order
        m = cp.cap_masks.get(cap, 0)
        if eligible & ~m:
            had = eligible
            eligible &= m
            trace.append(TraceStep("filter", f"capability {cap}", cp.names_of(eligible)))
            if had and not eligible:  # no member of the policy can ever serve this request as sent
                return _fail(policy, "unsupported", f"capability:{cap}", trace)
    if policy.filters.context_fit:
        had = eligible
        eligible = _context_fit(cp, eligible, request, policy, trace)
        if had and not eligible:
            return _fail(policy, "unsupported", f"context:{_too_long(cp, had, request, policy)}", trace)

    # 2. open breakers ---------------------------------------------------------------------------
    open_mask = 0
    if signals.breakers:
        for i in cp.members(eligible):
            if signals.breakers.get(cp.names[i]) == "open":
                open_mask |= 1 << i
        if open_mask:
            eligible &= ~open_mask
            trace.append(TraceStep("breakers", f"open: {','.join(cp.names_of(open_mask))}", cp.names_of(eligible)))
    pool = eligible
    ctx = RuleContext(request, signals, now, cp.deps)

    # 3. budget ------------------------------------------------------------------------------------
    tier: str | None = None
    downgraded = False
    b = policy.budget
    frac = ctx.budget_fraction("any")
    if frac <= 0.0 and b.on_exceeded == "reject":
        trace.append(TraceStep("budget", "exhausted → reject", ()))
        return _fail(policy, "budget_exceeded", "budget:exhausted", trace)
    if b.on_exceeded == "downgrade" and b.downgrade_tier and frac <= b.downgrade_below:
        narrowed = pool & cp.tier_masks.get(b.downgrade_tier, 0)
        if narrowed:
            pool, tier, downgraded = narrowed, b.downgrade_tier, True
            trace.append(TraceStep("budget", f"{frac:.0%} left → tier {tier}", cp.names_of(pool)))
            reasons.append(f"budget→tier {tier}")
        elif frac <= 0.0:
            trace.append(TraceStep("budget", f"exhausted, tier {b.downgrade_tier} unavailable", ()))
            return _fail(policy, "budget_exceeded", "budget:exhausted", trace)
        else:
            trace.append(TraceStep("budget", f"tier {b.downgrade_tier} unavailable, not downgraded", cp.names_of(pool)))

    # 4. rules ---------------------------------------------------------------------------------------
    selector: SelectorSpec = policy.selector
    picked: list[int] | None = None
    matched = False
    for rule in cp.rules:
        if not rule.predicate(ctx):
            continue
        matched = True
        did: list[str] = []
        if rule.forbid is not None:
            eligible &= ~rule.forbid
            pool &= ~rule.forbid
            did.append("forbid")
        if rule.avoid is not None:
            narrowed = pool & ~rule.avoid
            if narrowed:
                pool = narrowed
                did.append("avoid")
            else:
                did.append("avoid (nothing else, ignored)")
        if rule.restrict is not None:
            narrowed = pool & rule.restrict
            if narrowed:
                pool = narrowed
                did.append("restrict")
            else:
                did.append("restrict (empty, ignored)")
        if rule.tier is not None:
            narrowed = pool & cp.tier_masks.get(rule.tier, 0)
            if narrowed:
                pool, tier = narrowed, rule.tier
                did.append(f"tier {rule.tier}")
            else:
                did.append(f"tier {rule.tier} (empty, ignored)")
        if rule.selector is not None:
            selector = rule.selector
            did.append(f"selector {selector.type}")
        if rule.pick is not None:
            avail = [i for i in rule.pick if pool >> i & 1]
            if avail:
                picked = avail
                did.append(f"pick {cp.names[avail[0]]}")
            else:
                did.append("pick (unavailable, ignored)")
        detail = f"{rule.name} [{rule.condition_text}]: {'; '.join(did)}"
        trace.append(TraceStep("rule", detail, cp.names_of(pool)))
        reasons.append(f"rule:{rule.name}→{did[-1]}")
        if picked is not None or rule.stop:
            break
    if cp.rules and not matched:
        trace.append(TraceStep("rule", f"none of {len(cp.rules)} matched", cp.names_of(pool)))

    if not pool:
        trace.append(TraceStep("selector", "no candidates left", ()))
        return _fail(policy, "no_candidates", "no candidates", trace, open_breakers=cp.names_of(open_mask))

    # 5. selector ----------------------------------------------------------------------------------
    pool_list = cp.members(pool)
    if picked is not None:
        rest = [i for i in pool_list if i not in picked]
        sel = Selection(picked + rest, 1.0, "pick")
    else:
        inp = SelectorInput(cp, pool_list, request, signals, rng, plugins)
        if selector.type == "bandit":
            inp.context = bandit_context(request, now, policy.name)
        sel = select(selector, inp)
    primary = sel.ranking[0]
    trace.append(TraceStep("selector", f"{sel.detail} → {cp.names[primary]}", tuple(cp.names[i] for i in sel.ranking)))
    reasons.append(f"selector={sel.detail}→{cp.deps[primary].model}")

    # 6. escalation may put its cheap model first -------------------------------------------------
    escalation = None
    esc = policy.escalation
    if esc is not None and esc.enabled:
        first = next((i for i in cp.esc_first if pool >> i & 1), None)
        if first is not None and first != primary:
            primary = first
            reasons.append(f"escalation first={cp.deps[first].model}")
        # A budget downgrade also bounds escalation: it must not buy its way back to the strong tier.
        scope = pool if downgraded else eligible
        to = [i for i in cp.esc_to if scope >> i & 1 and i != primary]
        if to:
            escalation = EscalationPlan(cp.deps[primary], [cp.deps[i] for i in to], esc.threshold, esc.score,
                                        esc.stream_buffer_chars)
            trace.append(
                TraceStep("escalation", f"{esc.score} < {esc.threshold} → {cp.names[to[0]]}", tuple(cp.names[i] for i in to))
            )
        else:
            trace.append(TraceStep("escalation", "no escalation target available", ()))

    # 7. candidates: primary, explicit chain, then the selector's ranking -------------------------
    fb = policy.fallbacks
    order = [primary]
    for i in cp.chain:
        if eligible >> i & 1 and i not in order:
            order.append(i)
    if fb.include_remaining:
        for i in sel.ranking:
            if i not in order:
                order.append(i)
    del order[fb.max_candidates:]
    names = tuple(cp.names[i] for i in order)
    trace.append(TraceStep("fallbacks", f"on {','.join(fb.triggers)}", names))

    return Decision(
        policy=policy.name,
        candidates=[cp.deps[i] for i in order],
        reason="; ".join(reasons),
        propensity=sel.propensity if order[0] == sel.ranking[0] else 1.0,
        trace=trace,
        retry=policy.retry,
        fallback_triggers=trigger_kinds(fb.triggers),
        escalation=escalation,
        selector=selector.type if picked is None else "pick",
        tier=tier,
        arm=sel.arm,
        bandit=sel.bandit,
        scores=sel.scores,
    )


# What a request with no output limit must have room for beside its prompt: one token of answer.
MIN_ANSWER_TOKENS = 1


def _context_fit(
    cp: CompiledPolicy, eligible: int, request: RequestFeatures, policy: Policy, trace: list[TraceStep]
) -> int:
    """``eligible`` without the deployments whose window cannot hold the request. With an output limit,
    the prompt and that limit must fit. Without one, only what the request must have (the prompt and
    `MIN_ANSWER_TOKENS`): the deployment answers in the room that is left (the upstream call carries no
    limit). ``default_max_tokens`` then only prefers: while some deployment also has room for that much
    output, those that have not are left out."""
    f = policy.filters
    base = request.prompt_tokens + f.context_margin_tokens
    asked = request.max_tokens
    need = base + (MIN_ANSWER_TOKENS if asked is None else asked)
    dropped = 0
    for i in cp.members(eligible):
        d = cp.deps[i]
        if d.context_window < need or (
            asked is not None and d.max_output_tokens is not None and asked > d.max_output_tokens
        ):
            dropped |= 1 << i
    if dropped:
        eligible &= ~dropped
        trace.append(TraceStep("filter", f"context {need} tokens", cp.names_of(eligible)))
    if asked is None and f.default_max_tokens > MIN_ANSWER_TOKENS and eligible:
        wanted = base + f.default_max_tokens
        roomy = 0
        for i in cp.members(eligible):
            if cp.deps[i].context_window >= wanted:
                roomy |= 1 << i
        if roomy and roomy != eligible:
            eligible = roomy
            trace.append(TraceStep("filter", f"context {wanted} tokens (default_max_tokens)", cp.names_of(eligible)))
    return eligible


def _too_long(cp: CompiledPolicy, had: int, request: RequestFeatures, policy: Policy) -> str:
    """Which part of a request no deployment in ``had`` has room for: "prompt" when its prompt leaves no
    room for any answer in every window, else "output" (its output limit asks too much)."""
    least = request.prompt_tokens + policy.filters.context_margin_tokens
    if request.max_tokens != 0:  # an echo-only scoring request (max_tokens 0) needs no room to answer
        least += MIN_ANSWER_TOKENS
    return "output" if any(cp.deps[i].context_window >= least for i in cp.members(had)) else "prompt"


def _fail(
    policy: Policy, error: str, reason: str, trace: list[TraceStep], open_breakers: tuple[str, ...] = ()
) -> Decision:
    return Decision(
        policy=policy.name,
        candidates=[],
        reason=reason,
        propensity=1.0,
        trace=trace,
        retry=policy.retry,
        fallback_triggers=trigger_kinds(policy.fallbacks.triggers),
        error=error,
        open_breakers=open_breakers,
    )


def bandit_context(request: RequestFeatures, now: datetime, policy: str) -> dict[str, Any]:
    """Plain-value context handed to ``Bandit.choose`` (and logged for its later ``update``)."""
    return {
        "policy": policy,
        "prompt_tokens": request.prompt_tokens,
        "max_tokens": request.max_tokens,
        "capabilities": sorted(request.capabilities),
        "tags": sorted(request.tags),
        "metadata": dict(request.metadata),
        "key_id": request.key_id,
        "user": request.user,
        "team": request.team,
        "endpoint": request.endpoint,
        "hour": now.hour,
        "weekday": now.weekday(),
        "prompt_text": request.prompt_text,
    }


def unknown_targets(policy: Policy, deployments: Sequence[DeploymentConfig]) -> list[str]:
    """Targets in the policy that name no deployment: a warning for the admin API, not an error
    (a deployment may be added later; a policy shared by environments may name extras)."""
    cp = CompiledPolicy(policy, deployments)
    for spec in [policy.selector, *(r.then.selector for r in policy.rules if r.then.selector)]:
        prepare(spec, cp)
    return sorted(cp.unknown_targets)


def largest_context_window(deployments: Sequence[DeploymentConfig]) -> int | None:
    """The largest context window among ``deployments`` that serve chat (all of them when none does: an
    embedding model's window bounds its input); None for no deployments. The largest, because a request
    that fits it is served: one too long for a smaller window moves on to a larger one (the
    ``context_window`` fallback), and a policy routes it to a deployment it fits."""
    chat = [d for d in deployments if "chat" in d.capabilities] or deployments
    return max((d.context_window for d in chat), default=None)


def policy_context_window(policy: Policy, deployments: Sequence[DeploymentConfig]) -> int | None:
    """`largest_context_window` of the deployments ``policy`` may route to at all: its allow/deny
    filters and the capabilities it requires."""
    cp = compiled_for(policy, deployments)
    eligible = cp.allow_mask & ~cp.deny_mask
    for cap in cp.base_caps:
        eligible &= cp.cap_masks.get(cap, 0)
    return largest_context_window([cp.deps[i] for i in cp.members(eligible)])
