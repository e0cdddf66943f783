"""`hybridgate demo-traffic`: fake providers and a realistic mixed workload, so the console has data.

Starts four fake providers on 127.0.0.1 (``backends/fake_provider``), each one model with its own
latency, price and answer quality, and one of them flaky. ``--write-config FILE`` writes a
gateway config that routes to them (plus two demo policies: cheapest-first and a bandit); serve
the gateway with it, then run ``hybridgate demo-traffic``: it installs the demo policies and keys
through the admin API, sends ``--requests`` chat requests (short questions, summaries, code; three
teams' keys; direct model names and policies) with ``--concurrency`` in flight, and posts feedback
for most answers: a score drawn around the answering model's quality. A progress bar runs while it
works and a summary (per model: requests, errors, mean score, cost) ends it; ``--json`` prints the
summary as JSON. The providers keep serving until Ctrl-C (``--exit`` stops them at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

if TYPE_CHECKING:
    from backends.fake_provider import FakeProviderThread


@dataclass(frozen=True)
class DemoModel:
    name: str
    latency_ms: int
    input_per_mtok: float
    output_per_mtok: float
    quality: float  # mean feedback score of its answers
    flaky_every: int = 0  # after every n-th request sent, its next answer is a 500


MODELS = (
    DemoModel("demo-mini", 60, 0.15, 0.6, 0.55),
    DemoModel("demo-standard", 180, 1.0, 3.0, 0.72),
    DemoModel("demo-large", 450, 5.0, 15.0, 0.86),
    DemoModel("demo-flaky", 120, 0.5, 1.5, 0.66, flaky_every=9),
)
POLICIES = {
    "demo-cheapest": {
        "name": "demo-cheapest",
        "description": "Cheapest capable deployment first.",
        "selector": {"type": "cheapest", "expected_output_tokens": 256},
        "fallbacks": {"triggers": ["5xx", "timeout", "429", "connection"]},
    },
    "demo-bandit": {
        "name": "demo-bandit",
        "description": "Thompson sampling over the demo models, learning from feedback.",
        "selector": {"type": "bandit", "bandit": "default", "arms": "models", "fallback": "cheapest"},
        "fallbacks": {"triggers": ["5xx", "timeout", "429", "connection"]},
    },
}
KEYS = (
    ("demo-research", "research", "alice"),
    ("demo-support", "support", "bob"),
    ("demo-growth", "growth", "carol"),
    ("demo-support-bot", "support", "support-bot"),
)
PROMPTS = (
    ("chat", "What is the capital of {x}?", 16),
    ("chat", "Give me three name ideas for a {x} startup.", 48),
    ("summary", "Summarise this report in two sentences: " + "The {x} team shipped the release. " * 40, 80),
    ("code", "Write a Python function that parses {x} log lines and counts errors per hour.", 200),
    ("analysis", "Compare the trade-offs of {x} for a small engineering team, with a recommendation.", 300),
)
TOPICS = ("France", "Kenya", "retail", "fintech", "Kafka vs Postgres queues", "nginx", "a gardening", "Peru")
ROUTES = ("demo-cheapest", "demo-bandit", "demo-bandit", "auto", "demo-mini", "demo-large")


def gateway_config(database_url: str, base_port: int = 9301) -> dict[str, Any]:
    """A gateway config routing to the demo providers (local model off; policies from the admin API)."""
    return {
        "database_url": database_url,
        "local_model": {"enabled": False},
        "log": {"bodies": "full"},
        "deployments": [
            {
                "name": f"{m.name}-1",
                "model": m.name,
                "upstream_model": m.name,
                "api_base": f"http://127.0.0.1:{base_port + i}/v1",
                "timeout_s": 10,
                "pricing": {"input_per_mtok": m.input_per_mtok, "output_per_mtok": m.output_per_mtok},
                "capabilities": ["chat", "completion"],
            }
            for i, m in enumerate(MODELS)
        ],
    }


class Providers:
    """The demo's fake providers, one thread each."""

    def __init__(self, base_port: int = 9301) -> None:
        self.base_port = base_port
        self.threads: dict[str, FakeProviderThread] = {}
        self.calls: dict[str, int] = defaultdict(int)

    def start(self) -> None:
        from backends.fake_provider import FakeProviderThread

        for i, m in enumerate(MODELS):
            fp = FakeProviderThread(port=self.base_port + i, reply_mode="lorem", reply_tokens=40)
            fp.start()
            fp.set_faults(f"latency:{m.latency_ms}")
            self.threads[m.name] = fp

    def tick(self) -> None:
        """Called once per request sent: every n-th one arms the flaky provider's next answer to fail."""
        for m in MODELS:
            if m.flaky_every:
                self.calls[m.name] += 1
                if self.calls[m.name] % m.flaky_every == 0:
                    self.threads[m.name].fail_next(1, "500")

    def stop(self) -> None:
        for fp in self.threads.values():
            fp.stop()


async def _setup(client: httpx.AsyncClient, admin_token: str | None) -> list[str]:
    """Install the demo policies and create the demo keys; returns the keys' secrets ([] when the
    gateway does not require keys and the admin API cannot create them)."""
    headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
    for name, spec in POLICIES.items():
        r = await client.put(
            f"/admin/api/policies/{name}",
            content=yaml.safe_dump(spec, sort_keys=False),
            headers={**headers, "content-type": "application/yaml", "x-comment": "demo-traffic"},
        )
        if r.status_code not in (200, 201):
            raise SystemExit(
                f"hybridgate demo-traffic: cannot install policy {name}: {r.status_code} {r.text[:200]}"
            )
    secrets = []
    for name, team, user in KEYS:
        r = await client.post(
            "/admin/api/keys", json={"name": name, "team": team, "user": user}, headers=headers
        )
        if r.status_code != 201:
            raise SystemExit(
                f"hybridgate demo-traffic: cannot create key {name}: {r.status_code} {r.text[:200]}"
            )
        secrets.append(r.json()["key"])
    return secrets


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    scores: float = 0.0
    scored: int = 0


async def _one(
    client: httpx.AsyncClient,
    providers: Providers,
    key: str,
    rng: random.Random,
    tallies: dict[str, Tally],
    feedback_share: float,
) -> None:
    kind, template, max_tokens = rng.choice(PROMPTS)
    route = rng.choice(ROUTES)
    providers.tick()
    body = {
        "model": route,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": template.format(x=rng.choice(TOPICS))}],
    }
    headers = {"authorization": f"Bearer {key}", "x-hybridgate-tags": kind}
    r = await client.post("/v1/chat/completions", json=body, headers=headers)
    model = r.headers.get("x-hybridgate-model") or route
    t = tallies[model]
    t.requests += 1
    if r.status_code != 200:
        t.errors += 1
        return
    quality = next((m.quality for m in MODELS if m.name == model), 0.6)
    if rng.random() < feedback_share:
        score = min(1.0, max(0.0, rng.gauss(quality + (0.08 if kind == "chat" else -0.04), 0.12)))
        await client.post(
            "/v1/feedback",
            json={"request_id": r.headers["x-request-id"], "score": round(score, 3)},
            headers=headers,
        )
        t.scores += score
        t.scored += 1
    usage = r.json().get("usage") or {}
    m = next((x for x in MODELS if x.name == model), None)
    if m is not None:
        t.cost_usd += (
            usage.get("prompt_tokens", 0) * m.input_per_mtok
            + usage.get("completion_tokens", 0) * m.output_per_mtok
        ) / 1e6


async def run(args: argparse.Namespace, providers: Providers) -> dict[str, Any]:
    from rich.progress import Progress

    rng = random.Random(args.seed)
    tallies: dict[str, Tally] = defaultdict(Tally)
    async with httpx.AsyncClient(base_url=args.gateway, timeout=30) as client:
        deadline = time.monotonic() + args.wait
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"hybridgate demo-traffic: no gateway answering at {args.gateway}")
            await asyncio.sleep(0.5)
        keys = await _setup(client, args.admin_token)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.requests):
            queue.put_nowait(i)
        t0 = time.monotonic()
        with Progress(disable=args.json) as progress:
            task = progress.add_task("demo traffic", total=args.requests)

            async def worker() -> None:
                while True:
                    try:
                        i = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    try:
                        await _one(client, providers, keys[i % len(keys)], rng, tallies, args.feedback)
                    except httpx.HTTPError:
                        tallies["(transport error)"].errors += 1
                    progress.advance(task)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - t0
    per_model = {
        m: {
            "requests": t.requests,
            "errors": t.errors,
            "cost_usd": round(t.cost_usd, 6),
            "feedback": t.scored,
            "mean_score": round(t.scores / t.scored, 3) if t.scored else None,
        }
        for m, t in sorted(tallies.items())
    }
    return {
        "gateway": args.gateway,
        "requests": args.requests,
        "seconds": round(elapsed, 1),
        "requests_per_s": round(args.requests / elapsed, 1) if elapsed else None,
        "per_model": per_model,
        "console": f"{args.gateway}/admin",
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--gateway", default="http://127.0.0.1:8080")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--feedback", type=float, default=0.8, help="share of answers that get a feedback score")
    ap.add_argument(
        "--admin-token", default=None, help="the gateway's admin token (none: loopback-only admin)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--base-port", type=int, default=9301, help="the providers listen on this port and the next three"
    )
    ap.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the gateway to answer")
    ap.add_argument(
        "--write-config", metavar="FILE", help="write a gateway config for the demo providers and exit"
    )
    ap.add_argument(
        "--database-url",
        default="sqlite+aiosqlite:///./hybridgate-demo.db",
        help="with --write-config: the log database",
    )
    ap.add_argument("--exit", action="store_true", help="stop the providers when the traffic is done")
    ap.add_argument("--json", action="store_true")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hybridgate demo-traffic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


def run_cli(args: argparse.Namespace) -> int:
    if args.write_config:
        Path(args.write_config).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write_config).write_text(
            yaml.safe_dump(gateway_config(args.database_url, args.base_port), sort_keys=False)
        )
        print(
            f"wrote {args.write_config}: serve it with HYBRIDGATE_CONFIG={args.write_config} hybridgate serve --migrate"
        )
        return 0
    providers = Providers(args.base_port)
    providers.start()
    try:
        summary = asyncio.run(run(args, providers))
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(
                f"\nsent {summary['requests']} requests in {summary['seconds']} s "
                f"({summary['requests_per_s']}/s) through {summary['gateway']}"
            )
            print(
                f"{'model':<22}{'requests':>9}{'errors':>8}{'feedback':>10}{'mean score':>12}{'cost USD':>12}"
            )
            for m, t in summary["per_model"].items():
                score = f"{t['mean_score']:.3f}" if t["mean_score"] is not None else "-"
                print(
                    f"{m:<22}{t['requests']:>9}{t['errors']:>8}{t['feedback']:>10}{score:>12}{t['cost_usd']:>12.6f}"
                )
            print(f"\nopen the console: {summary['console']}")
        if not args.exit:
            print("demo providers keep serving; Ctrl-C to stop them", file=sys.stderr)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        providers.stop()


if __name__ == "__main__":
    raise SystemExit(main())
