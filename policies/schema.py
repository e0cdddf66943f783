"""Policy schema: what a virtual model name (``auto``, ``cheap-first``...) means, as validated data.

A policy is pure configuration. It never touches I/O; `router.decide` interprets it. The models
forbid unknown fields everywhere, because a misspelt option silently ignored is the worst kind of
routing bug (traffic goes somewhere nobody asked for). Cross references (a rule naming a tier that
does not exist) are checked by `reference_errors`, which the loader turns into errors with YAML
line numbers like the field errors.

Targets: wherever a policy names deployments, a string matches a deployment whose ``name`` or
``model`` equals it, or, written ``tag:<t>``, every deployment carrying tag ``<t>``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from common.types import RetrySettings

Capability = Literal["chat", "completion", "embedding", "tools", "json_mode", "vision", "logprobs"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ErrorKind = Literal[
    "timeout",
    "rate_limit",
    "overloaded",
    "server_error",
    "connection",
    "context_window",
    "content_policy",
    "bad_request",
    "auth",
    "not_found",
    "stream_cut",
    "malformed",
]

# Spellings people use for triggers, normalised to backends.base.UpstreamError kinds.
TRIGGER_ALIASES: dict[str, str] = {
    "5xx": "server_error",
    "500": "server_error",
    "502": "server_error",
    "503": "server_error",
    "504": "timeout",
    "429": "rate_limit",
    "408": "timeout",
}

# Triggers that also cover a kind of their own family: a provider's 429 ("rate_limit") and a local
# engine's full queue ("overloaded") both mean busy now, try elsewhere, so a policy that falls back on
# one (every shipped policy names 429) falls back on the other. "overloaded" may be named alone.
IMPLIED_TRIGGERS: dict[str, tuple[str, ...]] = {"rate_limit": ("overloaded",)}


def trigger_kinds(triggers: list[str]) -> frozenset[str]:
    """The error kinds a policy's fallback ``triggers`` fall back on (`IMPLIED_TRIGGERS` added)."""
    return frozenset(triggers).union(*(IMPLIED_TRIGGERS.get(t, ()) for t in triggers))


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class _Strict(BaseModel):
    # Numbers are finite: a NaN bound never matches and a NaN or infinite weight never wins, so either
    # would quietly turn a rule or a split off instead of saying what is wrong.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class NumRange(_Strict):
    """Bounds on a number; every given bound must hold."""

    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> NumRange:
        if self.gt is None and self.gte is None and self.lt is None and self.lte is None:
            raise ValueError("give at least one of gt, gte, lt, lte")
        return self


class TimeWindow(_Strict):
    """Local time of day window ``[from, to)``; wraps past midnight when ``to`` < ``from``."""

    start: str = Field(alias="from", description="HH:MM")
    end: str = Field(alias="to", description="HH:MM")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"expected HH:MM (24h), got {v!r}")
        return v


class Condition(_Strict):
    """All given clauses must hold (AND). ``any``/``not`` give OR and negation.

    Why these clauses: they are exactly what the request features and signals snapshot carry, so
    a rule can be evaluated without any I/O.
    """

    prompt_tokens: NumRange | None = None
    max_tokens: NumRange | None = None
    total_tokens: NumRange | None = Field(default=None, description="prompt tokens + max_tokens")
    capabilities: list[Capability] | None = Field(default=None, description="request needs any of these")
    tags_any: list[str] | None = None
    tags_all: list[str] | None = None
    metadata: dict[str, Any] | None = Field(
        default=None, description="metadata[k] == v, or metadata[k] in v when v is a list"
    )
    keys: list[str] | None = None
    users: list[str] | None = None
    teams: list[str] | None = None
    time: TimeWindow | None = None
    weekdays: list[Weekday] | None = None
    timezone: str = "UTC"
    budget_remaining: NumRange | None = Field(
        default=None, description="fraction 0..1 of the tightest budget left (key/user/team)"
    )
    budget_scope: Literal["any", "key", "user", "team"] = "any"
    local_queue_depth: NumRange | None = Field(default=None, description="smallest queue over local deployments")
    local_free_slots: NumRange | None = Field(default=None, description="free slots summed over local deployments")
    any_of: list[Condition] | None = Field(default=None, alias="any")
    not_: Condition | None = Field(default=None, alias="not")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(v)
        except Exception as exc:
            raise ValueError(f"unknown timezone {v!r}") from exc
        return v


class Action(_Strict):
    """What a matching rule does to the candidate pool.

    ``forbid`` removes deployments everywhere (fallbacks too: it is the tool for residency or
    compliance constraints). ``avoid`` takes deployments out of what the selector chooses from while
    anything else is left there, and is ignored where nothing is: the tool for overflow (off a busy
    local model), which must never turn a request away that the avoided deployment could still take.
    ``restrict`` and ``tier`` narrow what the selector chooses from.
    ``pick`` fixes the choice in the given order and ends rule evaluation.
    """

    pick: list[str] | None = None
    restrict: list[str] | None = None
    forbid: list[str] | None = None
    avoid: list[str] | None = None
    tier: str | None = None
    selector: SelectorSpec | None = None
    stop: bool = False

    @field_validator("pick", "restrict", "forbid", "avoid", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _does_something(self) -> Action:
        if not (self.pick or self.restrict or self.forbid or self.avoid or self.tier or self.selector):
            raise ValueError("a rule action needs at least one of pick, restrict, forbid, avoid, tier, selector")
        return self


class Rule(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    when: Condition = Field(default_factory=Condition, description="empty: always matches")
    then: Action
    enabled: bool = True


# ---- selectors -------------------------------------------------------------------------------

class _SelectorBase(_Strict):
    pass


class FixedSelector(_SelectorBase):
    """Deterministic order; candidates not listed follow in deployment-config order."""

    type: Literal["fixed"]
    order: list[str] = Field(default_factory=list)


class WeightedSelector(_SelectorBase):
    """Random choice proportional to weights (A/B splits, canaries). Propensity = w / sum(w)."""

    type: Literal["weighted"]
    weights: dict[str, float]
    default_weight: float = Field(default=0.0, ge=0)

    @field_validator("weights")
    @classmethod
    def _nonneg(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, w in v.items() if w < 0]
        if bad:
            raise ValueError(f"weights must be >= 0 ({', '.join(bad)})")
        return v


class CheapestSelector(_SelectorBase):
    """Lowest expected USD cost for this request (prompt + expected output tokens)."""

    type: Literal["cheapest"]
    expected_output_tokens: int = Field(default=256, ge=0, description="used when the request has no max_tokens")


class LowestLatencySelector(_SelectorBase):
    """Lowest EWMA latency. Deployments without data sort first (cold start explores them)."""

    type: Literal["lowest_latency"]
    unknown_latency_ms: float | None = Field(default=None, ge=0, description="None: unknown sorts first")


class LeastBusySelector(_SelectorBase):
    """Lowest (in-flight + queue depth) / capacity; capacity from max_concurrency or free slots."""

    type: Literal["least_busy"]


class ClassifierSelector(_SelectorBase):
    """Asks an injected scorer for P(answer ok) per model, then maximises ``p - cost_weight * rel_cost``
    among candidates with ``p >= threshold`` (all candidates when none reaches it).

    rel_cost is the expected cost relative to the most expensive candidate (0..1), so cost_weight
    is in units of probability: 0.2 means "20 points of P(ok) are worth the whole price gap".
    """

    type: Literal["classifier"]
    scorer: str = "default"
    threshold: float = Field(default=0.5, ge=0, le=1)
    cost_weight: float = Field(default=1.0, ge=0, alias="lambda")
    default_p: float = Field(default=0.0, ge=0, le=1, description="P(ok) for a candidate the scorer omits")
    expected_output_tokens: int = Field(default=256, ge=0)
    fallback: Literal["fixed", "cheapest", "lowest_latency", "least_busy"] = "cheapest"


class BanditSelector(_SelectorBase):
    """Delegates to an injected bandit; arms are model names (default) or deployment names.

    ``context_scorer`` names a classifier scorer (``router.artifact`` or an activated one): its P(ok) for
    every arm joins the bandit's context as ``scores``, so a contextual bandit (``bandit: linucb_scored``)
    learns online how far to trust the offline classifier for each arm.
    """

    type: Literal["bandit"]
    bandit: str = "default"
    arms: Literal["models", "deployments"] = "models"
    context_scorer: str | None = Field(default=None, min_length=1)
    fallback: Literal["fixed", "cheapest", "lowest_latency", "least_busy"] = "cheapest"


SelectorSpec = Annotated[
    FixedSelector
    | WeightedSelector
    | CheapestSelector
    | LowestLatencySelector
    | LeastBusySelector
    | ClassifierSelector
    | BanditSelector,
    Field(discriminator="type"),
]


# ---- the rest of the pipeline -------------------------------------------------------------------

class Filters(_Strict):
    """Hard constraints applied before any rule: a deployment failing them is never tried."""

    allow: list[str] | None = Field(default=None, description="targets; None = every deployment")
    deny: list[str] = Field(default_factory=list)
    context_fit: bool = Field(default=True, description="prompt tokens + max_tokens (or, with none, one "
                              "token of answer) must fit the window")
    context_margin_tokens: int = Field(default=0, ge=0, description="slack for token-estimate error")
    default_max_tokens: int = Field(
        default=0, ge=0,
        description="output to keep room for when the request sets no limit: deployments with that room are "
        "preferred, but one with less still serves it (with the room left) when no other can")
    capabilities: list[Capability] = Field(default_factory=list, description="needed in addition to the request's")


class Fallbacks(_Strict):
    """Where to go when the primary fails, and on which failures.

    ``chain`` comes right after the primary; then, if ``include_remaining``, the rest of the pool in
    selector order. A ``context_window`` failure skips to a deployment with a larger window.
    """

    chain: list[str] = Field(default_factory=list)
    # Not called ``on``: YAML 1.1 reads a bare ``on:`` key as the boolean True.
    triggers: list[ErrorKind] = Field(
        default_factory=lambda: ["server_error", "timeout", "rate_limit", "connection", "context_window"]
    )
    include_remaining: bool = True
    max_candidates: int = Field(default=5, ge=1)

    @field_validator("triggers", mode="before")
    @classmethod
    def _aliases(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [TRIGGER_ALIASES.get(str(x), x) for x in v]
        return v


class Escalation(_Strict):
    """Cheap model first; when its confidence is under ``threshold``, ask a stronger one.

    ``score`` names how the gateway computes confidence: mean token ``logprobs``, or a trained answer
    ``verifier`` (for providers that return no log-probabilities); the router only resolves who goes
    first and who is escalated to. A streamed request holds back up to ``stream_buffer_chars`` of the
    first answer, judges what it holds (the whole answer when it is shorter, else its beginning), then
    streams it on or escalates.
    """

    enabled: bool = True
    first: list[str] = Field(default_factory=list, description="empty: the decided primary")
    to: list[str] = Field(min_length=1)
    threshold: float = Field(ge=0, le=1)
    score: str = Field(
        default="logprobs",
        pattern=r"^(logprobs|verifier(:[A-Za-z0-9_.-]+)?)$",
        description="logprobs: the answer's token probabilities; verifier[:name]: a trained answer "
        "verifier (hybridgate router train-verifier, router.verifiers in the config)",
    )
    stream_buffer_chars: int = Field(
        default=2000,
        ge=1,
        le=1_000_000,
        description="streamed requests: characters of the first answer held back and judged before any is "
        "sent (the whole answer when shorter); the client's first token waits for them",
    )


class Budget(_Strict):
    """What to do when the caller's budget (key/user/team) is spent or nearly spent."""

    on_exceeded: Literal["reject", "downgrade"] = "reject"
    downgrade_tier: str | None = None
    downgrade_below: float = Field(default=0.0, ge=0, le=1, description="fraction left that triggers downgrade")

    @model_validator(mode="after")
    def _tier_for_downgrade(self) -> Budget:
        if self.on_exceeded == "downgrade" and not self.downgrade_tier:
            raise ValueError("on_exceeded: downgrade needs downgrade_tier")
        return self


class Policy(_Strict):
    """A virtual model. Evaluated as: filters → rules → selector → fallback chain."""

    # a model name clients send, and a key of the policies table: bounded like an API key's name
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: str = ""
    filters: Filters = Field(default_factory=Filters)
    tiers: dict[str, list[str]] = Field(default_factory=dict, description="tier name -> targets")
    rules: list[Rule] = Field(default_factory=list)
    selector: SelectorSpec = Field(default_factory=lambda: FixedSelector(type="fixed"))
    fallbacks: Fallbacks = Field(default_factory=Fallbacks)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    escalation: Escalation | None = None
    budget: Budget = Field(default_factory=Budget)

    # Compiled form cached by router.decide (keyed on the deployments list); not part of the spec.
    _compiled: Any = PrivateAttr(default=None)


Action.model_rebuild()
Rule.model_rebuild()
Policy.model_rebuild()


def reference_errors(policy: Policy) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-field problems pydantic cannot see field by field: (loc, message) pairs.

    Kept outside validation so the loader can point each at its own YAML line.
    """
    errs: list[tuple[tuple[str | int, ...], str]] = []
    tiers = set(policy.tiers)
    known = ", ".join(sorted(tiers)) or "none defined"
    seen: dict[str, int] = {}
    for i, rule in enumerate(policy.rules):
        if rule.name in seen:
            errs.append((("rules", i, "name"), f"duplicate rule name {rule.name!r} (also rules[{seen[rule.name]}])"))
        seen.setdefault(rule.name, i)
        if rule.then.tier is not None and rule.then.tier not in tiers:
            errs.append((("rules", i, "then", "tier"), f"unknown tier {rule.then.tier!r} (tiers: {known})"))
    if policy.budget.downgrade_tier is not None and policy.budget.downgrade_tier not in tiers:
        errs.append(
            (("budget", "downgrade_tier"), f"unknown tier {policy.budget.downgrade_tier!r} (tiers: {known})")
        )
    for name, targets in policy.tiers.items():
        if not targets:
            errs.append((("tiers", name), "a tier needs at least one target"))
    return errs
