"""Selectors: rank the candidate pool and say how likely the first choice was.

Every selector returns a full ranking, not just a winner: the tail of the ranking is the natural
fallback order (the next cheapest, the next fastest...). The propensity is the probability that
*this* primary was chosen given the pool: 1.0 for deterministic selectors, w/sum(w) for
weighted, the bandit's own for bandit. Off-policy evaluation divides by it, so it must be exact.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.types import RequestFeatures
from policies.schema import (
    BanditSelector,
    CheapestSelector,
    ClassifierSelector,
    FixedSelector,
    LeastBusySelector,
    LowestLatencySelector,
    SelectorSpec,
    WeightedSelector,
)
from router.compiled import CompiledPolicy
from router.protocols import Plugins
from router.signals import Signals


@dataclass(slots=True)
class Selection:
    ranking: list[int]  # deployment indexes, best first; a permutation of the pool
    propensity: float
    detail: str  # for trace and reason, e.g. "cheapest" or "weighted p=0.25"
    arm: str | None = None
    bandit: str | None = None  # the plugin that chose ``arm``: its name travels to feedback
    scores: dict[str, float] | None = None


@dataclass(slots=True)
class SelectorInput:
    """What a selector sees: the pool (config order) and the request/signals."""

    cp: CompiledPolicy
    pool: list[int]
    request: RequestFeatures
    signals: Signals
    rng: random.Random
    plugins: Plugins
    context: Mapping[str, Any] | None = None  # bandit context, built by decide on demand


def expected_costs(inp: SelectorInput, output_tokens: int) -> list[float]:
    """USD this request is expected to cost on each pool member (same order as ``inp.pool``)."""
    req = inp.request
    out = req.max_tokens if req.max_tokens is not None else output_tokens
    prices = inp.cp.prices
    override = inp.signals.prices
    names = inp.cp.names
    costs = []
    for i in inp.pool:
        pin, pout = override.get(names[i], prices[i]) if override else prices[i]
        costs.append((req.prompt_tokens * pin + out * pout) / 1e6)
    return costs


def _sort_by(pool: list[int], keys: list[Any]) -> list[int]:
    # Stable: ties keep config order, so equal deployments are chosen predictably.
    order = sorted(range(len(pool)), key=keys.__getitem__)
    return [pool[j] for j in order]


def select_fixed(spec: FixedSelector, inp: SelectorInput) -> Selection:
    order: list[int] | None = inp.cp.selector_cache.get(id(spec))  # type: ignore[assignment]
    if order is None:
        order = inp.cp.selector_cache[id(spec)] = inp.cp.ordered(spec.order)
    in_pool = set(inp.pool)
    ranking = [i for i in order if i in in_pool]
    ranking += [i for i in inp.pool if i not in ranking]
    return Selection(ranking, 1.0, "fixed")


def _weights(spec: WeightedSelector, cp: CompiledPolicy) -> list[float]:
    w = cp.selector_cache.get(id(spec))
    if w is None:
        per = [spec.default_weight] * len(cp.deps)
        done: set[int] = set()
        for target, weight in spec.weights.items():
            for i in cp.indexes(target):
                if i not in done:  # first matching target wins (names usually come before tags)
                    per[i] = weight
                    done.add(i)
        w = cp.selector_cache[id(spec)] = per
    return w  # type: ignore[return-value]


def select_weighted(spec: WeightedSelector, inp: SelectorInput) -> Selection:
    per = _weights(spec, inp.cp)
    pool = inp.pool
    ws = [per[i] for i in pool]
    total = sum(ws)
    if total <= 0:
        j = inp.rng.randrange(len(pool))
        p = 1.0 / len(pool)
    else:
        r = inp.rng.random() * total
        acc = 0.0
        j = len(pool) - 1
        for k, w in enumerate(ws):
            acc += w
            if r < acc and w > 0:
                j = k
                break
        while ws[j] <= 0:  # float edge: r landed on total exactly; take the last positive weight
            j -= 1
        p = ws[j] / total
    rest = [pool[k] for k in sorted((k for k in range(len(pool)) if k != j), key=lambda k: -ws[k])]
    return Selection([pool[j], *rest], p, f"weighted p={p:.3g}")


def select_cheapest(spec: CheapestSelector, inp: SelectorInput) -> Selection:
    return Selection(_sort_by(inp.pool, expected_costs(inp, spec.expected_output_tokens)), 1.0, "cheapest")


def select_lowest_latency(spec: LowestLatencySelector, inp: SelectorInput) -> Selection:
    lat = inp.signals.latency_ms
    unknown = -1.0 if spec.unknown_latency_ms is None else spec.unknown_latency_ms
    keys = [lat.get(inp.cp.names[i], unknown) for i in inp.pool]
    return Selection(_sort_by(inp.pool, keys), 1.0, "lowest_latency")


def busy_score(inp: SelectorInput, i: int) -> float:
    """(in-flight + queued) / capacity. Capacity: the engine's view for local deployments
    (in-flight + free slots), else max_concurrency, else 1 (pure in-flight count)."""
    d = inp.cp.deps[i]
    in_flight = inp.signals.in_flight.get(d.name, 0)
    queued = 0
    capacity: float = d.max_concurrency or 1
    load = inp.signals.local_load.get(d.name)
    if load is not None:
        queued = load.queue_depth
        if load.free_slots is not None:
            capacity = max(1, in_flight + load.free_slots)
    return (in_flight + queued) / capacity


def select_least_busy(spec: LeastBusySelector, inp: SelectorInput) -> Selection:
    keys = [busy_score(inp, i) for i in inp.pool]
    return Selection(_sort_by(inp.pool, keys), 1.0, "least_busy")


def _predict(name: str, inp: SelectorInput) -> tuple[Mapping[str, float] | None, str]:
    """The scorer ``name``'s P(ok) per deployment or model name for this request, or (None, why not):
    no such scorer, or it failed. A broken model must degrade routing, never fail the request."""
    scorer = inp.plugins.scorers.get(name)
    if scorer is None:
        return None, f"classifier: no scorer {name!r}"
    try:
        return scorer.predict(inp.request.prompt_text, inp.request.metadata), ""
    except Exception as exc:
        return None, f"classifier error {type(exc).__name__}"


def _p_ok(raw: Mapping[str, float], inp: SelectorInput, i: int) -> float | None:
    """Pool member ``i``'s P(ok) in a scorer's answer: by its deployment name, else by its model."""
    p = raw.get(inp.cp.names[i])
    return raw.get(inp.cp.deps[i].model) if p is None else p


def select_classifier(spec: ClassifierSelector, inp: SelectorInput) -> Selection:
    raw, why = _predict(spec.scorer, inp)
    if raw is None:
        return _fallback(spec.fallback, inp, why)
    deps = inp.cp.deps
    probs = []
    for i in inp.pool:
        p = _p_ok(raw, inp, i)
        probs.append(float(spec.default_p if p is None else p))
    costs = expected_costs(inp, spec.expected_output_tokens)
    top = max(costs) if costs else 0.0
    util = [p - spec.cost_weight * (c / top if top > 0 else 0.0) for p, c in zip(probs, costs, strict=True)]
    ok = [p >= spec.threshold for p in probs]
    any_ok = any(ok)
    # Eligible first (by utility), then the rest (by utility): the rest are still valid fallbacks.
    keys = [(0 if (o or not any_ok) else 1, -u) for u, o in zip(util, ok, strict=True)]
    ranking = _sort_by(inp.pool, keys)
    scores = {deps[i].model: round(p, 4) for i, p in zip(inp.pool, probs, strict=True)}
    first = ranking[0]
    k = inp.pool.index(first)
    detail = f"classifier p={probs[k]:.2f}" + ("" if any_ok else f" (none ≥ {spec.threshold})")
    return Selection(ranking, 1.0, detail, scores=scores)


def select_bandit(spec: BanditSelector, inp: SelectorInput) -> Selection:
    bandit = inp.plugins.bandits.get(spec.bandit)
    if bandit is None:
        return _fallback(spec.fallback, inp, f"bandit: no bandit {spec.bandit!r}")
    deps = inp.cp.deps
    arm_of = (lambda i: deps[i].model) if spec.arms == "models" else (lambda i: deps[i].name)
    arms: list[str] = []
    for i in inp.pool:
        a = arm_of(i)
        if a not in arms:
            arms.append(a)
    context = inp.context or {}
    scores = _arm_scores(spec.context_scorer, inp, arm_of) if spec.context_scorer else None
    if scores is not None:
        context = {**context, "scores": scores}
    try:
        arm, propensity = bandit.choose(arms, context, inp.rng)
    except Exception as exc:
        return _fallback(spec.fallback, inp, f"bandit error {type(exc).__name__}")
    if arm not in arms or not (0.0 < propensity <= 1.0):
        return _fallback(spec.fallback, inp, f"bandit returned invalid ({arm!r}, {propensity!r})")
    chosen = [i for i in inp.pool if arm_of(i) == arm]
    ranking = chosen + [i for i in inp.pool if arm_of(i) != arm]
    detail = f"bandit arm={arm} p={propensity:.3g}"
    if spec.context_scorer and scores is None:
        detail += f" (no scores from {spec.context_scorer!r})"
    return Selection(ranking, float(propensity), detail, arm=arm, bandit=spec.bandit, scores=scores)


def _arm_scores(name: str, inp: SelectorInput, arm_of: Any) -> dict[str, float] | None:
    """P(ok) per arm from the scorer ``name`` (an arm's deployment name first, then its model), or None
    when there is no such scorer or it fails: the bandit then decides without them."""
    raw, _ = _predict(name, inp)
    if raw is None:
        return None
    out: dict[str, float] = {}
    for i in inp.pool:
        p = _p_ok(raw, inp, i)
        if p is not None:
            out.setdefault(arm_of(i), round(float(p), 6))
    return out


_FALLBACK_SPECS: dict[str, SelectorSpec] = {
    "fixed": FixedSelector(type="fixed"),
    "cheapest": CheapestSelector(type="cheapest"),
    "lowest_latency": LowestLatencySelector(type="lowest_latency"),
    "least_busy": LeastBusySelector(type="least_busy"),
}


def _fallback(kind: str, inp: SelectorInput, why: str) -> Selection:
    sel = select(_FALLBACK_SPECS[kind], inp)
    sel.detail = f"{why}; fallback {sel.detail}"
    return sel


_DISPATCH: dict[str, Any] = {
    "fixed": select_fixed,
    "weighted": select_weighted,
    "cheapest": select_cheapest,
    "lowest_latency": select_lowest_latency,
    "least_busy": select_least_busy,
    "classifier": select_classifier,
    "bandit": select_bandit,
}


def select(spec: SelectorSpec, inp: SelectorInput) -> Selection:
    """Run one selector over a non-empty pool."""
    return _DISPATCH[spec.type](spec, inp)


def prepare(spec: SelectorSpec, cp: CompiledPolicy) -> None:
    """Resolve a selector's targets ahead of traffic (and record unknown ones on ``cp``)."""
    if isinstance(spec, FixedSelector) and id(spec) not in cp.selector_cache:
        cp.selector_cache[id(spec)] = cp.ordered(spec.order)
    elif isinstance(spec, WeightedSelector):
        _weights(spec, cp)
