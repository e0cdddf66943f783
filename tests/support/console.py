"""Shared parts of the admin console tests: a gateway on its own Postgres database with an admin
token and three fake deployments, seeded log traffic (through the real log sink, so the rollup
triggers run), and SQL computed independently of the rollups."""

from __future__ import annotations

import contextlib
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from backends.fake_provider import FakeProviderThread
from gateway.config import Settings
from requestlog.migrate import upgrade
from requestlog.rows import AttemptRow, RequestRow
from tests.support.db import admin_execute
from tests.support.harness import GatewayThread, running_gateway

ADMIN_TOKEN = "admin-token-for-console-tests-7f3a9c"
PROVIDER_KEY = "sk-provider-secret-for-console-tests-0a1b2c3d"
PROVIDER_KEY_ENV = "HG_CONSOLE_TEST_PROVIDER_KEY"
MODELS = {"fake-a": "fake-model", "fake-b": "fake-cheap", "fake-c": "fake-strong"}
PRICES = {"fake-a": (1.0, 2.0), "fake-b": (0.1, 0.2), "fake-c": (5.0, 15.0)}
QUALITY = {"fake-a": 0.7, "fake-b": 0.5, "fake-c": 0.9}
POLICIES = ("console-draft", "cheap-demo", "bandit-demo")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A Postgres database of its own (for module-scoped gateways), migrated to head."""
    name = f"hg_console_{uuid.uuid4().hex[:10]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with contextlib.suppress(Exception):
            admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sync_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def console_settings(fp_base_url: str, db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    deployments = [
        {
            "name": name,
            "model": model,
            "upstream_model": model,
            "api_base": fp_base_url,
            "timeout_s": 5,
            "api_key_env": PROVIDER_KEY_ENV,
            "context_window": 4096,
            "pricing": {"input_per_mtok": PRICES[name][0], "output_per_mtok": PRICES[name][1]},
            "capabilities": ["chat", "completion"],
        }
        for name, model in MODELS.items()
    ]
    base: dict[str, Any] = {
        "database_url": db_url,
        "deployments": deployments,
        "admin_token": ADMIN_TOKEN,
        "require_keys": True,
        "log": {"bodies": "full", "spool_dir": str(tmp_path / "spool"), "batch_max_ms": 10},
        "local_model": {"enabled": False},
        "breaker": {"consecutive_failures": 3, "cooldown_s": 600, "min_requests": 1000},
    }
    base.update(overrides)
    return Settings(**base)


@contextlib.contextmanager
def console_gateway(
    tmp_path: Path, **overrides: Any
) -> Iterator[tuple[GatewayThread, FakeProviderThread, str]]:
    """A fake provider, a fresh database and a gateway using both (provider key from the environment)."""
    with (
        FakeProviderThread() as fp,
        fresh_database() as db_url,
        running_gateway(console_settings(fp.base_url, db_url, tmp_path, **overrides)) as gw,
    ):
        yield gw, fp, db_url


@dataclass
class Seeded:
    since: datetime
    until: datetime
    requests: int


def seed(gw: GatewayThread, db_url: str, n: int = 600, days: float = 5.0, seed_: int = 7) -> Seeded:
    """``n`` requests over the last ``days`` days with 1-3 attempts each, and feedback on ~70% of them;
    some feedback is stored before its request row (both rollup trigger paths run)."""
    rng = random.Random(seed_)
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    keys = [f"key{i}" for i in range(6)]
    feedback: list[tuple[str, float, datetime]] = []
    rows: list[tuple[RequestRow, list[AttemptRow]]] = []
    for i in range(n):
        t = since + timedelta(seconds=rng.uniform(0, days * 86400 - 60))
        key = rng.choice(keys)
        policy = POLICIES[i % 3]
        chain = rng.sample(list(MODELS), k=rng.choice([1, 1, 1, 2, 3]))
        attempts = []
        for no, dep in enumerate(chain):
            last = no == len(chain) - 1
            lat = math.exp(rng.gauss(math.log({"fake-a": 300, "fake-b": 120, "fake-c": 900}[dep]), 0.5))
            ok = last and rng.random() > 0.05
            attempts.append(
                AttemptRow(
                    id=f"r{i}-{no}",
                    request_id=f"r{i}",
                    attempt_no=no,
                    deployment=dep,
                    provider="openai_compatible",
                    upstream_model="fake-model",
                    started_at=t + timedelta(milliseconds=no * 10),
                    latency_ms=lat,
                    ttft_ms=lat * 0.3,
                    status="ok" if ok else "error",
                    http_status=200 if ok else 500,
                    prompt_tokens=100,
                    completion_tokens=50,
                    cost_usd=(100 * PRICES[dep][0] + 50 * PRICES[dep][1]) / 1e6 if ok else 0.0,
                )
            )
        final = attempts[-1]
        dep = chain[-1]
        rows.append(
            (
                RequestRow(
                    id=f"r{i}",
                    created_at=t,
                    endpoint="chat",
                    api_key_id=key,
                    user=f"user-{key}",
                    team=f"team{int(key[3]) % 3}",
                    requested_model=policy,
                    served_model=MODELS[dep],
                    provider="openai_compatible",
                    deployment=dep,
                    policy=policy,
                    policy_version=1,
                    route_reason="seeded",
                    propensity=1 / 3,
                    status=final.status,
                    http_status=final.http_status or 200,
                    prompt_tokens=100,
                    completion_tokens=50,
                    cost_usd=final.cost_usd,
                    latency_ms=sum(a.latency_ms or 0 for a in attempts),
                    ttft_ms=final.ttft_ms,
                    attempts_count=len(attempts),
                    prompt_text=f"seeded prompt {i} about topic {i % 7}",
                ),
                attempts,
            )
        )
        if final.status == "ok" and rng.random() < 0.7:
            score = min(1.0, max(0.0, rng.gauss(QUALITY[dep], 0.15)))
            feedback.append((f"r{i}", round(score, 3), t + timedelta(seconds=5)))
    early = {rid for rid, _, _ in feedback[: len(feedback) // 5]}  # stored before their requests
    with psycopg.connect(sync_dsn(db_url), autocommit=True) as conn:
        _insert_feedback(conn, [f for f in feedback if f[0] in early])
    for request, attempts in rows:
        gw.services.sink.record(request, attempts)
    gw.call(gw.services.sink.flush())
    with psycopg.connect(sync_dsn(db_url), autocommit=True) as conn:
        _insert_feedback(conn, [f for f in feedback if f[0] not in early])
        # an outage of fake-c a day ago: open, probing, closed again
        outage = now - timedelta(days=1)
        conn.cursor().executemany(
            "INSERT INTO breaker_events (deployment, state, at) VALUES (%s, %s, %s)",
            [
                ("fake-c", "open", outage),
                ("fake-c", "half_open", outage + timedelta(minutes=1)),
                ("fake-c", "closed", outage + timedelta(minutes=2)),
            ],
        )
    return Seeded(since=since, until=now, requests=n)


def _insert_feedback(conn: psycopg.Connection, items: list[tuple[str, float, datetime]]) -> None:
    if items:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO feedback (id, request_id, source, score, created_at) VALUES (%s, %s, 'user', %s, %s)",
                [(uuid.uuid4().hex, rid, score, at) for rid, score, at in items],
            )


def sql(db_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(sync_dsn(db_url)) as conn:
        return conn.execute(query, args).fetchall()
