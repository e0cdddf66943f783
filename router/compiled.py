"""A policy compiled against one deployment list: every target name turned into a bitmask.

Why bitmasks: the decision is a sequence of set operations on at most a few dozen deployments
(allow, deny, capabilities, restrict, forbid, avoid, tiers). With one int per set, each step is a
single ``&``, which is what keeps `decide` well under its 1 ms budget in pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.types import DeploymentConfig
from policies.schema import Policy, SelectorSpec
from router.rules import Predicate, compile_condition, describe_condition


@dataclass(slots=True)
class CompiledRule:
    name: str
    predicate: Predicate
    condition_text: str
    pick: list[int] | None  # deployment indexes in pick order
    restrict: int | None
    forbid: int | None
    avoid: int | None
    tier: str | None
    selector: SelectorSpec | None
    stop: bool


class CompiledPolicy:
    """Immutable once built; cached on the Policy object per deployment list."""

    def __init__(self, policy: Policy, deployments: Sequence[DeploymentConfig]) -> None:
        self.policy = policy
        self.deps: tuple[DeploymentConfig, ...] = tuple(deployments)
        self.names: tuple[str, ...] = tuple(d.name for d in self.deps)
        self.all_mask = (1 << len(self.deps)) - 1
        self.unknown_targets: set[str] = set()
        self._names_cache: dict[int, tuple[str, ...]] = {}

        f = policy.filters
        self.allow_mask = self.all_mask if f.allow is None else self.mask(f.allow)
        self.deny_mask = self.mask(f.deny)
        self.cap_masks: dict[str, int] = {}
        for i, d in enumerate(self.deps):
            for cap in d.capabilities:
                self.cap_masks[cap] = self.cap_masks.get(cap, 0) | (1 << i)
        self.base_caps = frozenset(f.capabilities)
        self.tier_masks = {name: self.mask(targets) for name, targets in policy.tiers.items()}
        self.rules = [
            CompiledRule(
                name=r.name,
                predicate=compile_condition(r.when),
                condition_text=describe_condition(r.when),
                pick=self.ordered(r.then.pick) if r.then.pick else None,
                restrict=self.mask(r.then.restrict) if r.then.restrict else None,
                forbid=self.mask(r.then.forbid) if r.then.forbid else None,
                avoid=self.mask(r.then.avoid) if r.then.avoid else None,
                tier=r.then.tier,
                selector=r.then.selector,
                stop=r.then.stop,
            )
            for r in policy.rules
            if r.enabled
        ]
        self.chain = self.ordered(policy.fallbacks.chain)
        esc = policy.escalation
        self.esc_first = self.ordered(esc.first) if esc else []
        self.esc_to = self.ordered(esc.to) if esc else []
        self.prices = [
            (d.pricing.input_per_mtok or 0.0, d.pricing.output_per_mtok or 0.0) for d in self.deps
        ]
        # Per-selector-spec precomputations (weights, fixed orders), keyed by id(spec): specs live
        # as long as the policy, which this object belongs to.
        self.selector_cache: dict[int, object] = {}

    # ---- target resolution ---------------------------------------------------------------------

    def indexes(self, target: str) -> list[int]:
        """Deployments a target names: exact deployment name, model name, or ``tag:<t>``."""
        if target.startswith("tag:"):
            tag = target[4:]
            hits = [i for i, d in enumerate(self.deps) if tag in d.tags]
        else:
            hits = [i for i, d in enumerate(self.deps) if d.name == target or d.model == target]
        if not hits:
            self.unknown_targets.add(target)
        return hits

    def mask(self, targets: Iterable[str]) -> int:
        m = 0
        for t in targets:
            for i in self.indexes(t):
                m |= 1 << i
        return m

    def ordered(self, targets: Iterable[str]) -> list[int]:
        """Indexes in target order (config order within one target), without repeats."""
        out: list[int] = []
        for t in targets:
            for i in self.indexes(t):
                if i not in out:
                    out.append(i)
        return out

    # ---- helpers used per request -----------------------------------------------------------------

    def members(self, mask: int) -> list[int]:
        return [i for i in range(len(self.deps)) if mask >> i & 1]

    def names_of(self, mask: int) -> tuple[str, ...]:
        names = self._names_cache.get(mask)
        if names is None:
            names = tuple(self.names[i] for i in self.members(mask))
            if len(self._names_cache) < 4096:
                self._names_cache[mask] = names
        return names


def compiled_for(policy: Policy, deployments: Sequence[DeploymentConfig]) -> CompiledPolicy:
    """The cached compilation of ``policy`` for this deployment list.

    Keyed by the identity of the deployment objects; the cache entry holds them, so an id can
    not be reused by another object while the entry lives. Deployments are treated as immutable
    (config reloads build new objects).
    """
    key = tuple(map(id, deployments))
    cache = policy._compiled
    if cache is None:
        cache = policy._compiled = {}
    cp = cache.get(key)
    # `model_copy` shares private attributes, so a copied policy may hold this very cache dict:
    # an entry compiled for another Policy object is recompiled, never used.
    if cp is None or cp.policy is not policy:
        if len(cache) >= 8:
            cache.clear()
        cp = cache[key] = CompiledPolicy(policy, deployments)
    return cp

