"""Budgets hold against what a request may cost as sent (`n` choices, no max_tokens) and against the
body's `user` field, across two gateways sharing Redis and Postgres."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.fake_provider import FakeProviderThread
from gateway.config import Settings
from requestlog.migrate import upgrade
from tests.support.harness import GatewayThread, running_gateway

PRICE_PER_TOKEN = 0.0025  # USD per output token: a 20-token answer costs $0.05
WORDS = " ".join(f"w{i}" for i in range(30))  # echoed back: every choice runs to max_tokens


def settings(tmp_path: Path, db_url: str, redis_url: str, prefix: str, provider: str, **kw: Any) -> Settings:
    dep = {
        "name": "priced",
        "model": "m",
        "upstream_model": "fake-model",
        "api_base": provider,
        "timeout_s": 10,
        "context_window": 8192,
        "pricing": {"input_per_mtok": 0.0, "output_per_mtok": PRICE_PER_TOKEN * 1e6},
    }
    return Settings(
        **{
            "database_url": db_url,
            "redis_url": redis_url,
            "redis_prefix": prefix,
            "deployments": [dep],
            "local_model": {"enabled": False},
            "require_keys": True,
            "log": {
                "bodies": "none",
                "spool_dir": str(tmp_path / f"spool-{uuid.uuid4().hex[:6]}"),
                "batch_max_ms": 10,
            },
            **kw,
        }
    )


@pytest.fixture()
def two_gateways(
    tmp_path: Path, fresh_pg_url: str, redis_url: str, redis_prefix: str
) -> Iterator[tuple[GatewayThread, GatewayThread]]:
    upgrade(fresh_pg_url)
    with FakeProviderThread() as fp:
        s = settings(
            tmp_path,
            fresh_pg_url,
            redis_url,
            redis_prefix,
            fp.base_url,
            budgets=[{"scope": "user:alice", "limit_usd": 0.16, "period": "day"}],
        )
        with running_gateway(s) as a, running_gateway(s) as b:
            yield a, b


async def _spend(
    gws: tuple[GatewayThread, GatewayThread], key: str, bodies: list[dict[str, Any]]
) -> tuple[int, float]:
    """Send every body at once, alternating gateways: (answered, USD those answers cost)."""
    headers = {"authorization": f"Bearer {key}"}

    async with httpx.AsyncClient(timeout=30, headers=headers) as client:

        async def one(i: int, body: dict[str, Any]) -> float | None:
            r = await client.post(gws[i % 2].base_url + "/v1/chat/completions", json=body)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "budget_exceeded"
                return None
            assert r.status_code == 200, r.text
            return r.json()["usage"]["completion_tokens"] * PRICE_PER_TOKEN

        got = await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    costs = [c for c in got if c is not None]
    return len(costs), sum(costs)


def _key(gw: GatewayThread, **fields: Any) -> str:
    return httpx.post(gw.base_url + "/admin/api/keys", json={"name": "k", **fields}).json()["key"]


async def test_n_choices_are_reserved_whole_so_the_budget_holds(
    two_gateways: tuple[GatewayThread, GatewayThread],
) -> None:
    key = _key(two_gateways[0], budget_usd=0.16, budget_period="day")
    rng = random.Random(18)
    bodies = [
        {
            "model": "m",
            "max_tokens": 20,
            "n": 1 if i % 2 else rng.randint(2, 128),
            "messages": [{"role": "user", "content": WORDS}],
        }
        for i in range(50)
    ]
    answered, spent = await _spend(two_gateways, key, bodies)
    assert answered >= 1
    assert spent <= 0.16 + 0.05 + 1e-9  # the budget plus one $0.05 request, at most (before: $15.39)


async def test_a_request_without_max_tokens_reserves_the_models_output_limit(
    two_gateways: tuple[GatewayThread, GatewayThread],
) -> None:
    key = _key(two_gateways[0], budget_usd=0.16, budget_period="day")
    body = {"model": "m", "messages": [{"role": "user", "content": WORDS}]}
    r = httpx.post(
        two_gateways[0].base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"  # 8k tokens may cost $20


async def test_the_body_user_field_cannot_escape_the_keys_bound_user_budget(
    two_gateways: tuple[GatewayThread, GatewayThread],
) -> None:
    key = _key(two_gateways[0], user="alice")
    bodies = [
        {
            "model": "m",
            "max_tokens": 20,
            "user": f"mallory-{i}",
            "messages": [{"role": "user", "content": WORDS}],
        }
        for i in range(50)
    ]
    answered, spent = await _spend(two_gateways, key, bodies)
    assert 1 <= answered <= 3
    assert spent <= 0.16 + 0.05 + 1e-9  # alice's $0.16 (before: 10 of 10 through, $0.65)
