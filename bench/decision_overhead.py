"""Decision overhead: how long `router.decide` takes for a realistic policy (10 rules, 8 deployments).

Run: ``python bench/decision_overhead.py [--n 20000] [--json out.json]``

Measures the pure routing cost (filters, rules, selector, fallbacks, trace) per request over
randomised request features and signals, for every selector type. The classifier and bandit
rows use trivial stubs, so they show the router's own overhead *excluding* the injected model.
Budget: p99 ≤ 1 ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.types import DeploymentConfig, Pricing, RequestFeatures
from policies.loader import parse_policy  # noqa: E402
from router import BudgetSnapshot, LocalLoad, Plugins, Signals, decide


def deployments() -> list[DeploymentConfig]:
    def d(name: str, model: str, pin: float, pout: float, ctx: int, provider: str = "litellm",
          caps: tuple[str, ...] = ("chat", "completion", "tools", "json_mode"), tags: tuple[str, ...] = ("external",),
          **kw: Any) -> DeploymentConfig:  # fmt: skip
        return DeploymentConfig(name=name, model=model, provider=provider, upstream_model=f"x/{name}",
                                context_window=ctx, pricing=Pricing(input_per_mtok=pin, output_per_mtok=pout),
                                capabilities=list(caps), tags=list(tags), **kw)  # fmt: skip

    vis = ("chat", "completion", "tools", "json_mode", "vision")
    return [
        d("gpt-4o-openai", "gpt-4o", 2.5, 10, 128_000, caps=vis),
        d("gpt-4o-azure", "gpt-4o", 2.5, 10, 128_000, caps=vis, tags=("external", "eu")),
        d("gpt-4o-mini", "gpt-4o-mini", 0.15, 0.6, 128_000, caps=vis),
        d("claude-3-5-sonnet", "claude-3-5-sonnet", 3, 15, 200_000),
        d("claude-3-5-haiku", "claude-3-5-haiku", 0.8, 4, 200_000),
        d("llama-3-70b", "llama-3-70b", 0.6, 0.6, 8192, provider="openai_compatible", tags=("eu",)),
        d("mistral-large", "mistral-large", 2, 6, 32_000, tags=("external", "eu")),
        d("jamba-local", "jamba-local", 0, 0, 16_384, provider="local", caps=("chat", "completion"),
          tags=("local", "eu"), max_concurrency=4),
    ]


POLICY = """\
name: bench
filters: {context_margin_tokens: 256, default_max_tokens: 512}
tiers:
  cheap: [gpt-4o-mini, claude-3-5-haiku, jamba-local, llama-3-70b]
  strong: [gpt-4o, claude-3-5-sonnet, mistral-large]
rules:
  - name: long-context
    when: {total_tokens: {gt: 100000}}
    then: {pick: [claude-3-5-sonnet, claude-3-5-haiku]}
  - name: eu-only
    when: {metadata: {region: [eu, ch]}}
    then: {restrict: ["tag:eu"]}
  - name: pii
    when: {any: [{tags_any: [pii]}, {metadata: {data_class: restricted}}]}
    then: {forbid: ["tag:external"]}
  - name: research-strong
    when: {teams: [research], prompt_tokens: {gt: 2000}}
    then: {tier: strong}
  - name: low-budget
    when: {budget_remaining: {lt: 0.1}}
    then: {tier: cheap}
  - name: night
    when: {time: {from: "22:00", to: "06:00"}, timezone: Europe/Berlin}
    then: {restrict: [jamba-local, llama-3-70b]}
  - name: weekend
    when: {weekdays: [sat, sun]}
    then: {forbid: [gpt-4o-openai]}
  - name: local-busy
    when: {local_queue_depth: {gte: 8}}
    then: {forbid: ["tag:local"]}
  - name: vip-keys
    when: {keys: [k1, k2, k3], not: {tags_any: [batch]}}
    then: {restrict: [gpt-4o, claude-3-5-sonnet]}
  - name: json-tools
    when: {capabilities: [json_mode, tools]}
    then: {forbid: [llama-3-70b]}
selector: {type: cheapest}
fallbacks:
  chain: [gpt-4o, claude-3-5-sonnet]
  triggers: [5xx, timeout, 429, connection, context_window]
escalation: {to: [gpt-4o], threshold: 0.6}
budget: {on_exceeded: downgrade, downgrade_tier: cheap}
"""

SELECTORS = {
    "cheapest": "{type: cheapest}",
    "fixed": "{type: fixed, order: [jamba-local, gpt-4o-mini]}",
    "weighted": "{type: weighted, weights: {gpt-4o-mini: 5, claude-3-5-haiku: 3, gpt-4o: 1, 'tag:local': 2}}",
    "lowest_latency": "{type: lowest_latency}",
    "least_busy": "{type: least_busy}",
    "classifier": "{type: classifier, threshold: 0.6, lambda: 0.5}",
    "bandit": "{type: bandit}",
}


class StubScorer:
    def __init__(self) -> None:
        self.p = {"gpt-4o": 0.92, "claude-3-5-sonnet": 0.9, "gpt-4o-mini": 0.7, "claude-3-5-haiku": 0.72}

    def predict(self, prompt_text: str, metadata: Mapping[str, Any]) -> Mapping[str, float]:
        return self.p


class StubBandit:
    def choose(self, arms: Sequence[str], context: Mapping[str, Any], rng: random.Random) -> tuple[str, float]:
        return arms[rng.randrange(len(arms))], 1.0 / len(arms)

    def update(self, arm: str, reward: float, context: Mapping[str, Any], propensity: float) -> None:
        pass


def random_inputs(rng: random.Random, n: int, deps: list[DeploymentConfig]) -> list[tuple[RequestFeatures, Signals, datetime]]:
    base = datetime(2024, 5, 15, tzinfo=UTC)
    out = []
    for _ in range(n):
        caps = frozenset(rng.sample(["tools", "json_mode", "vision"], rng.randint(0, 2)))
        req = RequestFeatures(
            prompt_tokens=int(rng.lognormvariate(7, 1.6)),
            max_tokens=rng.choice([None, 256, 1024, 4096]),
            capabilities=caps,
            tags=frozenset(rng.sample(["pii", "batch", "chat", "eval"], rng.randint(0, 2))),
            metadata={"region": rng.choice(["eu", "us", "ch", "ap"]), "data_class": rng.choice(["public", "restricted"])},
            key_id=rng.choice(["k1", "k4", "k5", None]),
            user=rng.choice(["alice", "bob", None]),
            team=rng.choice(["research", "support", None]),
            prompt_text="What is the capital of France?",
        )
        sig = Signals(
            breakers={d.name: rng.choices(["closed", "open", "half_open"], [0.9, 0.05, 0.05])[0] for d in deps},
            latency_ms={d.name: rng.uniform(200, 3000) for d in deps if rng.random() < 0.9},
            in_flight={d.name: rng.randint(0, 20) for d in deps},
            budgets={f"key:{req.key_id}": BudgetSnapshot(10.0, rng.uniform(0, 10.0))} if req.key_id else {},
            local_load={"jamba-local": LocalLoad(rng.randint(0, 12), rng.randint(0, 4))},
        )
        now = base + timedelta(minutes=rng.randint(0, 7 * 24 * 60))
        out.append((req, sig, now))
    return out


def measure(n: int, seed: int = 0) -> dict[str, dict[str, float]]:
    deps = deployments()
    rng = random.Random(seed)
    inputs = random_inputs(rng, n, deps)
    plugins = Plugins(scorers={"default": StubScorer()}, bandits={"default": StubBandit()})
    results: dict[str, dict[str, float]] = {}
    for name, spec in SELECTORS.items():
        policy = parse_policy(POLICY.replace("selector: {type: cheapest}", f"selector: {spec}"))
        for req, sig, now in inputs[:500]:  # warm up (compiles and caches the policy)
            decide(req, policy, deps, sig, rng, now, plugins=plugins)
        samples = []
        errors = 0
        gc.collect()
        for req, sig, now in inputs:
            t0 = time.perf_counter_ns()
            d = decide(req, policy, deps, sig, rng, now, plugins=plugins)
            samples.append(time.perf_counter_ns() - t0)
            errors += d.error is not None
        samples.sort()
        results[name] = {
            "p50_us": samples[len(samples) // 2] / 1000,
            "p99_us": samples[int(len(samples) * 0.99)] / 1000,
            "max_us": samples[-1] / 1000,
            "mean_us": statistics.fmean(samples) / 1000,
            "no_candidate_fraction": errors / len(samples),
        }
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    res = measure(args.n, args.seed)
    print(f"decide(): 10 rules, 8 deployments, {args.n} random requests per selector (python {sys.version.split()[0]})")
    print(f"{'selector':<16}{'p50 µs':>10}{'p99 µs':>10}{'max µs':>10}{'mean µs':>10}")
    for name, r in res.items():
        print(f"{name:<16}{r['p50_us']:>10.1f}{r['p99_us']:>10.1f}{r['max_us']:>10.1f}{r['mean_us']:>10.1f}")
    worst = max(r["p99_us"] for r in res.values())
    print(f"worst p99: {worst:.1f} µs (budget 1000 µs): {'OK' if worst <= 1000 else 'OVER BUDGET'}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if worst <= 1000 else 1


if __name__ == "__main__":
    raise SystemExit(main())
