"""Rule conditions compiled to predicates over a per-request context.

Why compile: a policy is evaluated on every request, and walking pydantic models with
``getattr``/``is None`` checks for each of 20 optional clauses per rule would spend most of the
decision budget on clauses nobody wrote. Compiling once per policy leaves, per request, only
the closures for the clauses that exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from common.types import DeploymentConfig, RequestFeatures
from policies.schema import Condition, NumRange
from router.signals import Signals

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class RuleContext:
    """Everything a condition may look at for one request; derived values computed at most once."""

    __slots__ = ("request", "signals", "now", "deployments", "_local", "_budget", "_lq", "_lfree")

    def __init__(
        self,
        request: RequestFeatures,
        signals: Signals,
        now: datetime,
        deployments: Sequence[DeploymentConfig],
    ) -> None:
        self.request = request
        self.signals = signals
        self.now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        self.deployments = deployments
        self._local: dict[str, datetime] = {}
        self._budget: dict[str, float] = {}
        self._lq: float | None = None
        self._lfree: float | None = None

    def local_time(self, tz: str) -> datetime:
        t = self._local.get(tz)
        if t is None:
            t = self.now.astimezone(UTC if tz == "UTC" else _zone(tz))
            self._local[tz] = t
        return t

    def budget_fraction(self, scope: str) -> float:
        f = self._budget.get(scope)
        if f is None:
            r = self.request
            f = self.signals.budget_fraction(r.key_id, r.user, r.team, scope)
            self._budget[scope] = f
        return f

    def local_queue_depth(self) -> float | None:
        """Smallest queue among self-hosted deployments (the one a request would join); None: no report.

        Self-hosted = reports its load (`Signals.local_load`): in-process engines and model servers
        reached over HTTP alike."""
        if self._lq is None:
            depths = [
                self.signals.local_load[d.name].queue_depth
                for d in self.deployments
                if d.name in self.signals.local_load
            ]
            self._lq = float(min(depths)) if depths else _UNKNOWN
        return None if self._lq is _UNKNOWN else self._lq

    def local_free_slots(self) -> float | None:
        """Free slots summed over self-hosted deployments; None when none reports them."""
        if self._lfree is None:
            slots = [
                load.free_slots
                for d in self.deployments
                if (load := self.signals.local_load.get(d.name)) is not None
                and load.free_slots is not None
            ]
            self._lfree = float(sum(slots)) if slots else _UNKNOWN
        return None if self._lfree is _UNKNOWN else self._lfree


# Sentinel for "computed, and nothing known" (distinct from "not computed yet").
_UNKNOWN = float("nan")


Predicate = Callable[[RuleContext], bool]

_zones: dict[str, ZoneInfo] = {}


def _zone(tz: str) -> ZoneInfo:
    z = _zones.get(tz)
    if z is None:
        z = _zones[tz] = ZoneInfo(tz)
    return z


def range_check(r: NumRange) -> Callable[[float], bool]:
    gt, gte, lt, lte = r.gt, r.gte, r.lt, r.lte

    def check(x: float) -> bool:
        return (
            (gt is None or x > gt)
            and (gte is None or x >= gte)
            and (lt is None or x < lt)
            and (lte is None or x <= lte)
        )

    return check


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def compile_condition(c: Condition) -> Predicate:
    """All clauses ANDed; an empty condition always matches."""
    clauses: list[Predicate] = []

    if c.prompt_tokens is not None:
        f = range_check(c.prompt_tokens)
        clauses.append(lambda ctx: f(ctx.request.prompt_tokens))
    if c.max_tokens is not None:
        f_mt = range_check(c.max_tokens)
        clauses.append(lambda ctx: f_mt(ctx.request.max_tokens or 0))
    if c.total_tokens is not None:
        f_tt = range_check(c.total_tokens)
        clauses.append(lambda ctx: f_tt(ctx.request.prompt_tokens + (ctx.request.max_tokens or 0)))
    if c.capabilities:
        caps = frozenset(c.capabilities)
        clauses.append(lambda ctx: not caps.isdisjoint(ctx.request.capabilities))
    if c.tags_any:
        tany = frozenset(c.tags_any)
        clauses.append(lambda ctx: not tany.isdisjoint(ctx.request.tags))
    if c.tags_all:
        tall = frozenset(c.tags_all)
        clauses.append(lambda ctx: tall <= ctx.request.tags)
    if c.metadata:
        wanted = [(k, frozenset(map(_hashable, v)) if isinstance(v, list) else None, v) for k, v in c.metadata.items()]

        def meta(ctx: RuleContext) -> bool:
            md = ctx.request.metadata
            for k, options, v in wanted:
                if k not in md:
                    return False
                got = md[k]
                if options is not None:
                    if _hashable(got) not in options:
                        return False
                elif got != v:
                    return False
            return True

        clauses.append(meta)
    for attr, values in (("key_id", c.keys), ("user", c.users), ("team", c.teams)):
        if values is not None:
            allowed = frozenset(values)
            clauses.append(lambda ctx, a=attr, s=allowed: getattr(ctx.request, a) in s)
    if c.time is not None:
        lo, hi, tz = _minutes(c.time.start), _minutes(c.time.end), c.timezone

        def in_window(ctx: RuleContext) -> bool:
            t = ctx.local_time(tz)
            m = t.hour * 60 + t.minute
            return lo <= m < hi if lo <= hi else (m >= lo or m < hi)

        clauses.append(in_window)
    if c.weekdays is not None:
        days = frozenset(_WEEKDAYS.index(d) for d in c.weekdays)
        tz_w = c.timezone
        clauses.append(lambda ctx: ctx.local_time(tz_w).weekday() in days)
    if c.budget_remaining is not None:
        f_b = range_check(c.budget_remaining)
        scope = c.budget_scope
        clauses.append(lambda ctx: f_b(ctx.budget_fraction(scope)))
    if c.local_queue_depth is not None:
        f_q = range_check(c.local_queue_depth)
        # No report from the local engine never matches: an unknown load must not trigger rules.
        clauses.append(lambda ctx: (q := ctx.local_queue_depth()) is not None and f_q(q))
    if c.local_free_slots is not None:
        f_s = range_check(c.local_free_slots)
        clauses.append(lambda ctx: (s := ctx.local_free_slots()) is not None and f_s(s))
    if c.any_of is not None:
        alts = [compile_condition(a) for a in c.any_of]
        clauses.append(lambda ctx: any(p(ctx) for p in alts))
    if c.not_ is not None:
        inner = compile_condition(c.not_)
        clauses.append(lambda ctx: not inner(ctx))

    if not clauses:
        return _always
    if len(clauses) == 1:
        return clauses[0]

    def all_of(ctx: RuleContext) -> bool:
        return all(p(ctx) for p in clauses)

    return all_of


def _always(ctx: RuleContext) -> bool:
    return True


def _hashable(v: object) -> object:
    """Metadata values arrive as JSON; lists/dicts are unhashable but may still be compared."""
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def describe_condition(c: Condition) -> str:
    """Short human text of a condition (for traces): the YAML keys that were set."""
    parts = [k for k, v in c.model_dump(exclude_defaults=True, by_alias=True).items() if v not in (None, [], {})]
    return ",".join(parts) if parts else "always"
