"""decide(): filters, rules, selectors, fallbacks, escalation, budget behaviour and traces."""

from __future__ import annotations

import random
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from common.types import RequestFeatures
from policies.loader import examples_dir, load_policy_dir, parse_policy
from policies.schema import Policy
from router import BudgetSnapshot, Decision, LocalLoad, Plugins, Signals, decide, unknown_targets
from tests.support.deployments import NOON, make_deployments

DEPS = make_deployments()


def pol(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text), default_name="t")


def run(
    policy: Policy,
    req: RequestFeatures | None = None,
    signals: Signals | None = None,
    *,
    plugins: Plugins | None = None,
    now: datetime = NOON,
    seed: int = 0,
) -> Decision:
    return decide(
        req or RequestFeatures(prompt_tokens=1000, max_tokens=200),
        policy,
        DEPS,
        signals or Signals(),
        random.Random(seed),
        now,
        plugins=plugins or Plugins(),
    )


def names(d: Decision) -> list[str]:
    return [c.name for c in d.candidates]


def steps(d: Decision, step: str) -> list[str]:
    return [t.detail for t in d.trace if t.step == step]


# ---- filters ------------------------------------------------------------------------------------


def test_default_policy_is_fixed_config_order() -> None:
    d = run(pol("name: t\nfallbacks: {max_candidates: 8}\n"))
    assert names(d) == [x.name for x in DEPS]
    assert d.propensity == 1.0 and d.error is None and d.selector == "fixed"


def test_capability_filter() -> None:
    d = run(pol("name: t\n"), RequestFeatures(prompt_tokens=10, capabilities=frozenset({"vision"})))
    assert set(names(d)) == {"gpt-4o-openai", "gpt-4o-azure", "gpt-4o-mini"}
    assert steps(d, "filter") == ["capability vision"]


def test_policy_level_capabilities_and_endpoint() -> None:
    d = run(pol("name: t\nfilters: {capabilities: [tools]}\nfallbacks: {max_candidates: 8}\n"))
    assert "jamba-local" not in names(d)
    d = run(pol("name: t\n"), RequestFeatures(prompt_tokens=10, endpoint="embedding"))
    # no member of the policy can ever serve it: a client error, not "try again later"
    assert d.error == "unsupported" and d.reason == "capability:embedding" and d.candidates == []


def test_context_window_filter_counts_max_tokens_and_margin() -> None:
    p = pol("name: t\nfilters: {context_margin_tokens: 100}\nfallbacks: {max_candidates: 8}\n")
    d = run(p, RequestFeatures(prompt_tokens=8000, max_tokens=100))
    assert "llama-3-70b" not in names(d)  # 8192 < 8200
    assert "jamba-local" in names(d)
    d = run(p, RequestFeatures(prompt_tokens=150_000, max_tokens=1000))
    assert set(names(d)) == {"claude-3-5-sonnet", "claude-3-5-haiku"}
    assert steps(d, "filter") == ["context 151100 tokens"]


def test_a_request_no_deployment_fits_is_unsupported_not_unavailable() -> None:
    p = pol("name: t\nfallbacks: {max_candidates: 8}\n")
    d = run(p, RequestFeatures(prompt_tokens=5_000_000, max_tokens=10))
    # the prompt alone leaves no room to answer anywhere: the prompt is what asks too much
    assert d.error == "unsupported" and d.reason == "context:prompt" and d.candidates == []
    assert steps(d, "filter")[-1] == "context 5000010 tokens"
    d = run(p, RequestFeatures(prompt_tokens=5_000_000))
    assert d.error == "unsupported" and d.reason == "context:prompt"


def test_an_output_limit_no_window_has_room_for_is_what_asks_too_much() -> None:
    p = pol("name: t\nfallbacks: {max_candidates: 8}\n")
    d = run(p, RequestFeatures(prompt_tokens=150_000, max_tokens=60_000))
    assert d.error == "unsupported" and d.reason == "context:output"
    # a window that holds the prompt only to its last token still leaves room for the one-token answer
    d = run(p, RequestFeatures(prompt_tokens=199_999, max_tokens=2))
    assert d.reason == "context:output"
    assert run(p, RequestFeatures(prompt_tokens=200_000, max_tokens=2)).reason == "context:prompt"


def test_default_max_tokens_prefers_room_for_it_when_request_has_none() -> None:
    p = pol("name: t\nfilters: {default_max_tokens: 500}\nfallbacks: {max_candidates: 8}\n")
    d = run(p, RequestFeatures(prompt_tokens=7800))
    assert "llama-3-70b" not in names(d)  # others have room for the default: they are preferred
    assert steps(d, "filter") == ["context 8300 tokens (default_max_tokens)"]
    assert "llama-3-70b" in names(run(p, RequestFeatures(prompt_tokens=7600)))


def test_default_max_tokens_never_refuses_a_prompt_that_fits() -> None:
    """The default is not the caller's limit: a prompt within it of the only window is served (the
    deployment answers in the room left, as the model named directly would), not refused."""
    only = [x for x in DEPS if x.name == "llama-3-70b"]
    p = pol("name: t\nfilters: {default_max_tokens: 500}\n")
    d = decide(RequestFeatures(prompt_tokens=7800), p, only, Signals(), random.Random(0), NOON)
    assert d.error is None and names(d) == ["llama-3-70b"]
    assert steps(d, "filter") == []
    d = decide(RequestFeatures(prompt_tokens=8191), p, only, Signals(), random.Random(0), NOON)
    assert d.error is None and names(d) == ["llama-3-70b"]  # room for one token of answer
    d = decide(RequestFeatures(prompt_tokens=8192), p, only, Signals(), random.Random(0), NOON)
    assert d.error == "unsupported" and d.reason == "context:prompt"
    # a limit the caller did send is counted in full
    d = decide(RequestFeatures(prompt_tokens=7800, max_tokens=500), p, only, Signals(), random.Random(0), NOON)
    assert d.error == "unsupported" and d.reason == "context:output"


def test_allow_deny_with_models_and_tags() -> None:
    p = pol("name: t\nfilters: {allow: [gpt-4o, 'tag:local', mistral-large], deny: [gpt-4o-azure]}\n")
    assert names(run(p)) == ["gpt-4o-openai", "mistral-large", "jamba-local"]


def test_open_breakers_skipped_half_open_kept() -> None:
    sig = Signals(breakers={"gpt-4o-openai": "open", "gpt-4o-azure": "half_open"})
    d = run(pol("name: t\n"), signals=sig)
    assert names(d)[0] == "gpt-4o-azure"
    assert "gpt-4o-openai" not in names(d)
    assert steps(d, "breakers") == ["open: gpt-4o-openai"]


def test_all_open_gives_no_candidates() -> None:
    sig = Signals(breakers={x.name: "open" for x in DEPS})
    d = run(pol("name: t\n"), signals=sig)
    assert d.error == "no_candidates" and d.candidates == [] and d.primary is None


# ---- rules --------------------------------------------------------------------------------------------

RULES = """\
name: t
tiers:
  cheap: [gpt-4o-mini, claude-3-5-haiku]
rules:
  - name: long
    when: {prompt_tokens: {gte: 50000}}
    then: {pick: [claude-3-5-sonnet]}
  - name: eu
    when: {metadata: {region: [eu, ch]}}
    then: {forbid: [gpt-4o-openai]}
  - name: vip
    when: {users: [alice], tags_any: [urgent]}
    then: {restrict: [gpt-4o]}
  - name: poor
    when: {budget_remaining: {lt: 0.2}}
    then: {tier: cheap, stop: true}
  - name: after-stop
    when: {}
    then: {forbid: [gpt-4o-mini]}
selector: {type: cheapest}
"""


def test_pick_rule_ends_rules_and_fixes_primary() -> None:
    d = run(pol(RULES), RequestFeatures(prompt_tokens=60_000, max_tokens=100))
    assert names(d)[0] == "claude-3-5-sonnet"
    assert d.selector == "pick" and d.propensity == 1.0
    assert d.reason.startswith("rule:long→pick claude-3-5-sonnet")
    assert len(steps(d, "rule")) == 1


def test_pick_unavailable_falls_through() -> None:
    sig = Signals(breakers={"claude-3-5-sonnet": "open"})
    d = run(pol(RULES), RequestFeatures(prompt_tokens=60_000, max_tokens=100), sig)
    assert "pick (unavailable, ignored)" in steps(d, "rule")[0]
    assert names(d)[0] == "claude-3-5-haiku"  # cheapest of what fits 60k (llama/jamba do not)


def test_forbid_binds_fallbacks_too() -> None:
    p = pol(RULES.replace("selector: {type: cheapest}", "selector: {type: fixed}\nfallbacks: {chain: [gpt-4o-openai], max_candidates: 8}"))
    d = run(p, RequestFeatures(prompt_tokens=10, metadata={"region": "eu"}))
    assert "gpt-4o-openai" not in names(d)
    d = run(p, RequestFeatures(prompt_tokens=10, metadata={"region": "us"}))
    assert "gpt-4o-openai" in names(d)


def test_restrict_needs_all_clauses() -> None:
    p = pol(RULES)
    d = run(p, RequestFeatures(prompt_tokens=10, user="alice", tags=frozenset({"urgent"})))
    assert {c.model for c in d.candidates[:2]} == {"gpt-4o"}
    d = run(p, RequestFeatures(prompt_tokens=10, user="bob", tags=frozenset({"urgent"})))
    assert "vip" not in d.reason


def test_tier_and_stop() -> None:
    sig = Signals(budgets={"key:k1": BudgetSnapshot(10.0, spent_usd=9.0)})
    d = run(pol(RULES), RequestFeatures(prompt_tokens=10, key_id="k1"), sig)
    assert d.tier == "cheap"
    assert names(d)[0] == "gpt-4o-mini"  # after-stop (forbid gpt-4o-mini) never ran
    assert [s.split(" ")[0] for s in steps(d, "rule")] == ["poor"]


def test_restrict_to_empty_is_ignored() -> None:
    p = pol("name: t\nrules:\n  - name: r\n    then: {restrict: [nonexistent]}\n")
    d = run(p)
    assert "restrict (empty, ignored)" in steps(d, "rule")[0]
    assert names(d)[0] == "gpt-4o-openai"


def test_avoid_overflows_while_anything_else_is_left_and_never_refuses() -> None:
    p = pol("name: t\nrules:\n  - name: busy\n    then: {avoid: tag:local}\nselector: {type: fixed, order: [tag:local]}\n")
    d = run(p)
    assert names(d)[0] == "gpt-4o-openai" and "jamba-local" not in names(d)
    assert steps(d, "rule")[0].endswith("avoid")
    # every other deployment's breaker open: the avoided one still serves, unlike after a forbid
    others = Signals(breakers={x.name: "open" for x in DEPS if x.name != "jamba-local"})
    d = run(p, signals=others)
    assert d.error is None and names(d) == ["jamba-local"]
    assert "avoid (nothing else, ignored)" in steps(d, "rule")[0]


def test_shipped_auto_policy_keeps_a_saturated_local_model_that_is_the_only_deployment() -> None:
    """`make run` serves the local model alone: a burst that queues 16 requests there must queue the
    next one too (the engine's own bounded queue pushes back), not answer 503 "no candidates"."""
    auto = load_policy_dir(examples_dir().parent / "defaults")["auto"]
    local = [x for x in DEPS if x.name == "jamba-local"]
    busy = Signals(local_load={"jamba-local": LocalLoad(queue_depth=16, free_slots=0)})
    req = RequestFeatures(prompt_tokens=10)
    d = decide(req, auto, local, busy, random.Random(0), NOON)
    assert d.error is None and names(d) == ["jamba-local"]
    # with somewhere else to go, the overflow goes there
    d = decide(req, auto, DEPS, busy, random.Random(0), NOON)
    assert names(d)[0] != "jamba-local" and "jamba-local" not in names(d)
    assert names(decide(req, auto, DEPS, Signals(), random.Random(0), NOON))[0] == "jamba-local"


def test_selector_override_by_rule() -> None:
    p = pol("name: t\nrules:\n  - name: r\n    when: {teams: [ml]}\n    then: {selector: {type: cheapest}}\n")
    assert names(run(p, RequestFeatures(prompt_tokens=10, team="ml")))[0] == "jamba-local"
    assert names(run(p, RequestFeatures(prompt_tokens=10, team="ops")))[0] == "gpt-4o-openai"


def test_disabled_rule_is_skipped() -> None:
    p = pol("name: t\nrules:\n  - name: r\n    enabled: false\n    then: {pick: jamba-local}\n")
    assert names(run(p))[0] == "gpt-4o-openai"


@pytest.mark.parametrize(
    ("cond", "req", "match"),
    [
        ("{prompt_tokens: {gt: 100, lte: 200}}", {"prompt_tokens": 200}, True),
        ("{prompt_tokens: {gt: 100, lte: 200}}", {"prompt_tokens": 100}, False),
        ("{max_tokens: {gte: 4000}}", {"max_tokens": 4000}, True),
        ("{max_tokens: {gte: 4000}}", {}, False),
        ("{total_tokens: {gt: 1000}}", {"prompt_tokens": 600, "max_tokens": 500}, True),
        ("{capabilities: [tools, vision]}", {"capabilities": frozenset({"tools"})}, True),
        ("{capabilities: [vision]}", {"capabilities": frozenset({"tools"})}, False),
        ("{tags_all: [a, b]}", {"tags": frozenset({"a"})}, False),
        ("{tags_all: [a, b]}", {"tags": frozenset({"a", "b", "c"})}, True),
        ("{metadata: {tier: gold}}", {"metadata": {"tier": "gold"}}, True),
        ("{metadata: {tier: gold}}", {"metadata": {}}, False),
        ("{metadata: {n: [1, 2]}}", {"metadata": {"n": 2}}, True),
        ("{keys: [k1]}", {"key_id": "k1"}, True),
        ("{keys: [k1]}", {"key_id": None}, False),
        ("{any: [{users: [a]}, {teams: [t]}]}", {"team": "t"}, True),
        ("{not: {users: [a]}}", {"user": "a"}, False),
        ("{not: {users: [a]}}", {"user": "b"}, True),
    ],
)
def test_conditions(cond: str, req: dict[str, Any], match: bool) -> None:
    p = pol(f"name: t\nrules:\n  - name: r\n    when: {cond}\n    then: {{pick: mistral-large}}\n")
    fields = {"prompt_tokens": 10, **req}
    assert (names(run(p, RequestFeatures(**fields)))[0] == "mistral-large") is match


@pytest.mark.parametrize(
    ("when", "now", "match"),
    [
        # 22:00-06:00 Berlin (UTC+2 in May): 21:30 UTC = 23:30 local
        ('{time: {from: "22:00", to: "06:00"}, timezone: Europe/Berlin}', datetime(2024, 5, 15, 21, 30, tzinfo=UTC), True),
        ('{time: {from: "22:00", to: "06:00"}, timezone: Europe/Berlin}', datetime(2024, 5, 15, 12, 0, tzinfo=UTC), False),
        ('{time: {from: "22:00", to: "06:00"}, timezone: Europe/Berlin}', datetime(2024, 5, 15, 3, 59, tzinfo=UTC), True),
        ('{time: {from: "22:00", to: "06:00"}, timezone: Europe/Berlin}', datetime(2024, 5, 15, 4, 0, tzinfo=UTC), False),
        ('{time: {from: "09:00", to: "17:00"}}', datetime(2024, 5, 15, 9, 0, tzinfo=UTC), True),
        ('{time: {from: "09:00", to: "17:00"}}', datetime(2024, 5, 15, 17, 0, tzinfo=UTC), False),
        ("{weekdays: [sat, sun]}", datetime(2024, 5, 18, 12, 0, tzinfo=UTC), True),  # Saturday
        ("{weekdays: [sat, sun]}", NOON, False),  # Wednesday
        # Sunday 23:30 UTC is already Monday in Tokyo
        ("{weekdays: [mon], timezone: Asia/Tokyo}", datetime(2024, 5, 19, 23, 30, tzinfo=UTC), True),
        ("{weekdays: [sat, sun]}", datetime(2024, 5, 18, 12, 0), True),  # naive = UTC
    ],
)
def test_time_conditions(when: str, now: datetime, match: bool) -> None:
    p = pol(f"name: t\nrules:\n  - name: r\n    when: {when}\n    then: {{pick: jamba-local}}\n")
    assert (names(run(p, now=now))[0] == "jamba-local") is match


def test_budget_scope_condition() -> None:
    p = pol("name: t\nrules:\n  - name: r\n    when: {budget_remaining: {lt: 0.5}, budget_scope: team}\n    then: {pick: jamba-local}\n")
    sig = Signals(budgets={"key:k": BudgetSnapshot(1.0, spent_usd=0.9), "team:t": BudgetSnapshot(1.0, spent_usd=0.1)})
    req = RequestFeatures(prompt_tokens=10, key_id="k", team="t")
    assert names(run(p, req, sig))[0] != "jamba-local"  # the key is low, the team is not
    sig = Signals(budgets={"team:t": BudgetSnapshot(1.0, spent_usd=0.4, reserved_usd=0.2)})
    assert names(run(p, req, sig))[0] == "jamba-local"


def test_local_load_conditions_unknown_never_match() -> None:
    p = load_policy_dir(examples_dir())["local-first"]
    assert names(run(p))[0] == "jamba-local"  # no report: local-saturated must not fire
    busy = Signals(local_load={"jamba-local": LocalLoad(queue_depth=9, free_slots=0)})
    d = run(p, signals=busy)
    assert "jamba-local" not in names(d) and names(d)[0] == "gpt-4o-mini"
    p2 = pol("name: t\nrules:\n  - name: r\n    when: {local_free_slots: {gte: 2}}\n    then: {pick: jamba-local}\n")
    assert names(run(p2, signals=Signals(local_load={"jamba-local": LocalLoad(0, 2)})))[0] == "jamba-local"
    assert names(run(p2, signals=Signals(local_load={"jamba-local": LocalLoad(0, None)})))[0] != "jamba-local"


# ---- budget behaviour ----------------------------------------------------------------------------------------


def test_budget_exhausted_reject() -> None:
    sig = Signals(budgets={"user:u": BudgetSnapshot(5.0, spent_usd=5.0)})
    d = run(pol("name: t\n"), RequestFeatures(prompt_tokens=10, user="u"), sig)
    assert d.error == "budget_exceeded" and d.candidates == []
    # other users unaffected
    assert run(pol("name: t\n"), RequestFeatures(prompt_tokens=10, user="v"), sig).error is None


def test_budget_downgrade_threshold_and_exhausted() -> None:
    p = pol(
        """\
        name: t
        tiers: {free: [jamba-local]}
        budget: {on_exceeded: downgrade, downgrade_tier: free, downgrade_below: 0.1}
        """
    )
    req = RequestFeatures(prompt_tokens=10, key_id="k")
    d = run(p, req, Signals(budgets={"key:k": BudgetSnapshot(1.0, spent_usd=0.95)}))
    assert d.tier == "free" and names(d) == ["jamba-local"] and "budget→tier free" in d.reason
    assert run(p, req, Signals(budgets={"key:k": BudgetSnapshot(1.0, spent_usd=0.5)})).tier is None
    # exhausted, and the free tier cannot serve (too long for its window) → reject
    big = RequestFeatures(prompt_tokens=50_000, key_id="k")
    d = run(p, big, Signals(budgets={"key:k": BudgetSnapshot(1.0, spent_usd=1.0)}))
    assert d.error == "budget_exceeded"
    # nearly exhausted but tier unavailable → serve normally
    d = run(p, big, Signals(budgets={"key:k": BudgetSnapshot(1.0, spent_usd=0.95)}))
    assert d.error is None and "not downgraded" in steps(d, "budget")[0]


# ---- selectors --------------------------------------------------------------------------------------------------


def test_cheapest_uses_expected_output_and_price_overrides() -> None:
    p = pol("name: t\nselector: {type: cheapest}\nfilters: {deny: [jamba-local]}\nfallbacks: {max_candidates: 8}\n")
    # output-heavy: llama (0.6/0.6) beats mini (0.15/0.6)? mini is cheaper on input, equal on output.
    d = run(p, RequestFeatures(prompt_tokens=1000, max_tokens=4000))
    assert names(d)[:2] == ["gpt-4o-mini", "llama-3-70b"]
    sig = Signals(prices={"gpt-4o-mini": (5.0, 5.0)})
    assert names(run(p, RequestFeatures(prompt_tokens=1000, max_tokens=10), sig))[0] == "llama-3-70b"
    costs = [c.pricing.input_per_mtok * 1000 + c.pricing.output_per_mtok * 4000 for c in d.candidates]
    assert costs == sorted(costs)


def test_lowest_latency_unknown_first_then_ewma() -> None:
    p = pol("name: t\nselector: {type: lowest_latency}\nfilters: {allow: [gpt-4o, mistral-large]}\n")
    sig = Signals(latency_ms={"gpt-4o-openai": 900, "gpt-4o-azure": 400})
    assert names(run(p, signals=sig)) == ["mistral-large", "gpt-4o-azure", "gpt-4o-openai"]
    p2 = pol("name: t\nselector: {type: lowest_latency, unknown_latency_ms: 1000}\nfilters: {allow: [gpt-4o, mistral-large]}\n")
    assert names(run(p2, signals=sig)) == ["gpt-4o-azure", "gpt-4o-openai", "mistral-large"]


def test_least_busy() -> None:
    p = pol("name: t\nselector: {type: least_busy}\nfilters: {allow: [gpt-4o, jamba-local]}\n")
    sig = Signals(in_flight={"gpt-4o-openai": 5, "gpt-4o-azure": 2, "jamba-local": 1}, local_load={"jamba-local": LocalLoad(3, 0)})
    # jamba: (1+3)/max(1,1+0)=4 ; azure 2 ; openai 5
    assert names(run(p, signals=sig)) == ["gpt-4o-azure", "jamba-local", "gpt-4o-openai"]
    sig = Signals(in_flight={"gpt-4o-openai": 1, "gpt-4o-azure": 1, "jamba-local": 1}, local_load={"jamba-local": LocalLoad(0, 7)})
    assert names(run(p, signals=sig))[0] == "jamba-local"  # 1/8


def test_weighted_propensity_and_distribution() -> None:
    p = pol("name: t\nselector: {type: weighted, weights: {gpt-4o-mini: 3, claude-3-5-haiku: 1}}\n")
    counts: Counter[str] = Counter()
    for seed in range(4000):
        d = run(p, seed=seed)
        counts[names(d)[0]] += 1
        expected = 0.75 if names(d)[0] == "gpt-4o-mini" else 0.25
        assert d.propensity == pytest.approx(expected)
    assert set(counts) == {"gpt-4o-mini", "claude-3-5-haiku"}  # zero weights never primary
    assert counts["gpt-4o-mini"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_weighted_propensity_is_over_the_pool() -> None:
    p = pol("name: t\nselector: {type: weighted, weights: {gpt-4o-mini: 3, claude-3-5-haiku: 1}}\n")
    sig = Signals(breakers={"gpt-4o-mini": "open"})
    d = run(p, signals=sig)
    assert names(d)[0] == "claude-3-5-haiku" and d.propensity == 1.0


def test_weighted_all_zero_is_uniform() -> None:
    p = pol("name: t\nselector: {type: weighted, weights: {}}\nfilters: {allow: [gpt-4o]}\n")
    d = run(p)
    assert d.propensity == pytest.approx(0.5)


def test_same_seed_same_decision() -> None:
    p = pol("name: t\nselector: {type: weighted, weights: {gpt-4o: 1, claude-3-5-haiku: 1}}\n")
    assert [names(run(p, seed=s)) for s in range(20)] == [names(run(p, seed=s)) for s in range(20)]


class StubScorer:
    def __init__(self, probs: Mapping[str, float], raise_: bool = False) -> None:
        self.probs, self.raise_, self.calls = probs, raise_, []

    def predict(self, prompt_text: str, metadata: Mapping[str, Any]) -> Mapping[str, float]:
        self.calls.append((prompt_text, dict(metadata)))
        if self.raise_:
            raise RuntimeError("model not loaded")
        return self.probs


CLS = """\
name: t
filters: {allow: [gpt-4o-mini, gpt-4o-openai]}
selector: {type: classifier, threshold: 0.6, lambda: 0.5}
"""


def test_classifier_prefers_cheap_when_good_enough() -> None:
    s = StubScorer({"gpt-4o-mini": 0.8, "gpt-4o": 0.95})
    d = run(pol(CLS), RequestFeatures(prompt_tokens=500, prompt_text="2+2?", metadata={"a": 1}), plugins=Plugins(scorers={"default": s}))
    assert names(d) == ["gpt-4o-mini", "gpt-4o-openai"]
    assert d.scores == {"gpt-4o-mini": 0.8, "gpt-4o": 0.95} and d.propensity == 1.0
    assert s.calls == [("2+2?", {"a": 1})]


def test_classifier_escalates_when_cheap_below_threshold() -> None:
    s = StubScorer({"gpt-4o-mini": 0.5, "gpt-4o": 0.95})
    d = run(pol(CLS), plugins=Plugins(scorers={"default": s}))
    assert names(d)[0] == "gpt-4o-openai"


def test_classifier_none_reaches_threshold_uses_utility() -> None:
    s = StubScorer({"gpt-4o-mini": 0.5, "gpt-4o-openai": 0.55})  # deployment-name keys work too
    d = run(pol(CLS), plugins=Plugins(scorers={"default": s}))
    assert names(d)[0] == "gpt-4o-mini"  # 0.5 - tiny cost beats 0.55 - 0.5
    assert "none ≥ 0.6" in steps(d, "selector")[0]


def test_classifier_missing_or_failing_falls_back() -> None:
    d = run(pol(CLS))
    assert "no scorer 'default'" in steps(d, "selector")[0] and names(d)[0] == "gpt-4o-mini"
    d = run(pol(CLS), plugins=Plugins(scorers={"default": StubScorer({}, raise_=True)}))
    assert "classifier error RuntimeError; fallback cheapest" in steps(d, "selector")[0]
    assert d.error is None


class StubBandit:
    def __init__(self, arm: str | None = None, p: float = 0.4) -> None:
        self.arm, self.p, self.seen = arm, p, []

    def choose(self, arms: Sequence[str], context: Mapping[str, Any], rng: random.Random) -> tuple[str, float]:
        self.seen.append((list(arms), dict(context)))
        return (self.arm or arms[-1]), self.p

    def update(self, arm: str, reward: float, context: Mapping[str, Any], propensity: float) -> None:
        pass


def test_bandit_arms_propensity_and_context() -> None:
    p = load_policy_dir(examples_dir())["bandit"]
    b = StubBandit()
    d = run(p, RequestFeatures(prompt_tokens=42, user="u", prompt_text="hi"), plugins=Plugins(bandits={"default": b}))
    arms, ctx = b.seen[0]
    assert arms == ["gpt-4o", "gpt-4o-mini", "claude-3-5-haiku"]  # models, config order, deduplicated
    assert ctx["prompt_tokens"] == 42 and ctx["user"] == "u" and ctx["prompt_text"] == "hi" and ctx["weekday"] == 2
    assert d.arm == "claude-3-5-haiku" and names(d)[0] == "claude-3-5-haiku" and d.propensity == 0.4


def test_bandit_invalid_answer_falls_back() -> None:
    p = load_policy_dir(examples_dir())["bandit"]
    d = run(p, plugins=Plugins(bandits={"default": StubBandit(arm="nope")}))
    assert "invalid" in steps(d, "selector")[0] and d.propensity == 1.0 and d.arm is None


def test_bandit_over_deployments() -> None:
    p = pol("name: t\nfilters: {allow: [gpt-4o]}\nselector: {type: bandit, arms: deployments}\n")
    b = StubBandit(arm="gpt-4o-azure", p=0.5)
    d = run(p, plugins=Plugins(bandits={"default": b}))
    assert b.seen[0][0] == ["gpt-4o-openai", "gpt-4o-azure"] and names(d)[0] == "gpt-4o-azure"


def test_bandit_context_carries_the_classifier_scores_of_every_arm() -> None:
    spec = "name: t\nfilters: {allow: [gpt-4o, gpt-4o-mini]}\nselector: {type: bandit, context_scorer: default}\n"
    b = StubBandit(arm="gpt-4o-mini", p=0.7)
    scorer = StubScorer({"gpt-4o": 0.9, "gpt-4o-mini": 0.55, "other": 0.1})
    req = RequestFeatures(prompt_tokens=10, prompt_text="2+2?")
    d = run(pol(spec), req, plugins=Plugins(scorers={"default": scorer}, bandits={"default": b}))
    arms, ctx = b.seen[0]
    assert ctx["scores"] == {"gpt-4o": 0.9, "gpt-4o-mini": 0.55}  # the arms' only, keyed by arm
    assert d.scores == ctx["scores"] and d.arm == "gpt-4o-mini" and d.propensity == 0.7
    assert scorer.calls[0][0] == "2+2?"


def test_bandit_decides_without_scores_when_the_scorer_is_missing_or_fails() -> None:
    spec = "name: t\nfilters: {allow: [gpt-4o, gpt-4o-mini]}\nselector: {type: bandit, context_scorer: default}\n"
    for scorers in ({}, {"default": StubScorer({}, raise_=True)}):
        b = StubBandit()
        d = run(pol(spec), plugins=Plugins(scorers=scorers, bandits={"default": b}))
        assert "scores" not in b.seen[0][1] and d.scores is None and d.arm is not None
        assert "no scores from 'default'" in steps(d, "selector")[0]


# ---- fallbacks, escalation, next_after -----------------------------------------------------------------------


def test_fallback_chain_order_and_max_candidates() -> None:
    p = pol("name: t\nselector: {type: cheapest}\nfallbacks: {chain: [claude-3-5-sonnet, gpt-4o], max_candidates: 4}\n")
    d = run(p)
    assert names(d) == ["jamba-local", "claude-3-5-sonnet", "gpt-4o-openai", "gpt-4o-azure"]
    p = pol("name: t\nselector: {type: cheapest}\nfallbacks: {chain: [claude-3-5-sonnet], include_remaining: false}\n")
    assert names(run(p)) == ["jamba-local", "claude-3-5-sonnet"]


def test_fallback_chain_skips_open_and_filtered() -> None:
    p = pol("name: t\nfallbacks: {chain: [llama-3-70b, claude-3-5-sonnet], include_remaining: false}\n")
    sig = Signals(breakers={"claude-3-5-sonnet": "open"})
    assert names(run(p, RequestFeatures(prompt_tokens=9000), sig)) == ["gpt-4o-openai"]


def test_next_after_context_window_goes_larger() -> None:
    p = pol("name: t\nselector: {type: cheapest}\nfallbacks: {max_candidates: 8}\n")
    d = run(p, RequestFeatures(prompt_tokens=5000, max_tokens=100))
    assert names(d)[0] == "jamba-local"
    nxt = d.next_after("jamba-local", "context_window")
    assert nxt is not None and nxt.context_window > 16_384
    assert d.next_after("jamba-local", "server_error").name == names(d)[1]
    assert d.next_after("jamba-local", "server_error", tried={names(d)[1]}).name == names(d)[2]
    assert d.next_after(names(d)[-1], "timeout") is None


def test_escalation_plan() -> None:
    p = load_policy_dir(examples_dir())["cheap-first"]
    d = run(p)
    assert d.escalation is not None
    assert d.escalation.first.name == names(d)[0] == "jamba-local"
    assert [x.name for x in d.escalation.to] == ["gpt-4o-openai", "gpt-4o-azure", "claude-3-5-sonnet"]
    assert d.escalation.threshold == 0.7 and d.escalation.score == "logprobs"


def test_escalation_first_overrides_primary() -> None:
    p = pol("name: t\nescalation: {first: [gpt-4o-mini], to: [gpt-4o], threshold: 0.5}\n")
    d = run(p)
    assert names(d)[0] == "gpt-4o-mini" and d.propensity == 1.0
    assert "escalation first=gpt-4o-mini" in d.reason


# ---- trace / reason / examples --------------------------------------------------------------------------------------


def test_trace_and_reason_are_readable() -> None:
    p = pol(RULES)
    sig = Signals(breakers={"gpt-4o-azure": "open"})
    d = run(p, RequestFeatures(prompt_tokens=10, metadata={"region": "eu"}), sig)
    assert [t.step for t in d.trace] == ["breakers", "rule", "rule", "selector", "fallbacks"]
    assert d.reason == "rule:eu→forbid; rule:after-stop→forbid; selector=cheapest→jamba-local"
    rule = d.trace[1]
    assert rule.detail == "eu [metadata]: forbid" and "gpt-4o-openai" not in rule.remaining
    out = d.as_dict()
    assert out["candidates"][0] == "jamba-local" and out["trace"][0]["step"] == "breakers"
    assert out["retry"]["max_attempts"] == 4


def test_examples_route_sensibly() -> None:
    pols = load_policy_dir(examples_dir())
    for pname, p in pols.items():
        assert unknown_targets(p, DEPS) == [], pname
        d = run(p, RequestFeatures(prompt_tokens=500, max_tokens=100, prompt_text="hi"))
        assert d.error is None and d.candidates, pname
    auto = pols["auto"]
    d = run(auto, RequestFeatures(prompt_tokens=120_000, max_tokens=1000))
    assert names(d)[0] == "claude-3-5-sonnet"
    d = run(pols["cheap-first"], RequestFeatures(prompt_tokens=10, tags=frozenset({"pii"})))
    assert names(d) == ["jamba-local"]  # everything external is forbidden


def test_unknown_targets_reported() -> None:
    p = pol("name: t\nfilters: {allow: [gpt-4o, gpt-5]}\nselector: {type: weighted, weights: {'tag:nope': 1}}\n")
    assert unknown_targets(p, DEPS) == ["gpt-5", "tag:nope"]


def test_compiled_cache_follows_deployment_list() -> None:
    p = pol("name: t\n")
    d1 = decide(RequestFeatures(prompt_tokens=1), p, DEPS, Signals(), random.Random(0), NOON)
    other = make_deployments()[::-1]
    d2 = decide(RequestFeatures(prompt_tokens=1), p, other, Signals(), random.Random(0), NOON)
    assert names(d1)[0] == "gpt-4o-openai" and names(d2)[0] == "jamba-local"


def test_no_rule_matched_is_traced() -> None:
    d = run(pol(RULES), RequestFeatures(prompt_tokens=10, metadata={"region": "us"}))
    assert "none of 5 matched" not in steps(d, "rule")  # after-stop always matches
    p = pol("name: t\nrules:\n  - name: r\n    when: {users: [x]}\n    then: {pick: jamba-local}\n")
    assert steps(run(p), "rule") == ["none of 1 matched"]


def test_escalation_is_bounded_by_budget_downgrade() -> None:
    p = pol(
        """\
        name: t
        tiers: {cheap: [gpt-4o-mini, claude-3-5-haiku]}
        escalation: {to: [claude-3-5-haiku, gpt-4o], threshold: 0.5}
        budget: {on_exceeded: downgrade, downgrade_tier: cheap, downgrade_below: 0.2}
        """
    )
    req = RequestFeatures(prompt_tokens=10, key_id="k")
    d = run(p, req, Signals(budgets={"key:k": BudgetSnapshot(1.0, spent_usd=0.9)}))
    assert [x.name for x in d.escalation.to] == ["claude-3-5-haiku"]
    d = run(p, req)
    assert [x.name for x in d.escalation.to] == ["claude-3-5-haiku", "gpt-4o-azure"]  # primary excluded


def test_classifier_large_lambda_still_prefers_eligible() -> None:
    p = pol("name: t\nfilters: {allow: [gpt-4o-mini, gpt-4o-openai]}\nselector: {type: classifier, threshold: 0.9, lambda: 50}\n")
    d = run(p, plugins=Plugins(scorers={"default": StubScorer({"gpt-4o-mini": 0.5, "gpt-4o": 0.95})}))
    assert names(d)[0] == "gpt-4o-openai"  # the only one above threshold, however expensive


def test_model_copy_does_not_reuse_compiled_policy() -> None:
    p = pol("name: t\nselector: {type: fixed}\n")
    assert names(run(p))[0] == "gpt-4o-openai"
    q = p.model_copy(update={"selector": pol("name: t\nselector: {type: cheapest}\n").selector})
    assert names(run(q))[0] == "jamba-local"
    assert names(run(p))[0] == "gpt-4o-openai"


def test_time_rules_convert_non_utc_now() -> None:
    from datetime import timedelta, timezone

    p = pol('name: t\nrules:\n  - name: r\n    when: {time: {from: "09:00", to: "10:00"}}\n    then: {pick: jamba-local}\n')
    ny = datetime(2024, 5, 15, 5, 30, tzinfo=timezone(timedelta(hours=-4)))  # = 09:30 UTC
    assert names(run(p, now=ny))[0] == "jamba-local"
