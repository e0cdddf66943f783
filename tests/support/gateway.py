"""Gateway settings for the tests: deployments on fake providers, SQLite or Postgres logs, and an SDK client."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import openai

from gateway.config import Settings
from tests.support.harness import GatewayThread


def dep(name: str, model: str, base_url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "model": model, "upstream_model": "fake-model", "api_base": base_url,
            "timeout_s": 5, "stream_idle_timeout_s": 5, "context_window": 8192,
            "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}, **kw}


def settings(tmp_path: Path, db_url: str, deployments: list[dict[str, Any]], **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": db_url, "deployments": deployments, "local_model": {"enabled": False},
        "log": {"bodies": "none", "spool_dir": str(tmp_path / f"spool-{uuid.uuid4().hex[:6]}"), "batch_max_ms": 10},
        "breaker": {"consecutive_failures": 3, "min_requests": 100, "cooldown_s": 0.5, "window_s": 10},
        "policy_reload_s": 0.2,
    }
    base.update(kw)
    base["router"] = {"artifacts_dir": str(tmp_path), **kw.get("router", {})}
    return Settings(**base)


def sdk(gw: GatewayThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=30)


MSG = [{"role": "user", "content": "hello"}]



def gateway_settings(fp_base_url: str, db_url: str, tmp_path: Path, **overrides: object) -> Settings:
    deployments = [
        {"name": "fake-a", "model": "fake-model", "upstream_model": "fake-model", "api_base": fp_base_url,
         "timeout_s": 5, "stream_idle_timeout_s": 5, "context_window": 4096,
         "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
         "capabilities": ["chat", "completion", "embedding", "tools", "json_mode", "logprobs"]},
        {"name": "fake-emb", "model": "fake-embed", "upstream_model": "fake-embed", "api_base": fp_base_url,
         "timeout_s": 5, "pricing": {"input_per_mtok": 0.1, "output_per_mtok": 0.0}, "capabilities": ["embedding"]},
    ]
    base: dict[str, object] = {
        "database_url": db_url,
        "deployments": deployments,
        "log": {"bodies": "full", "spool_dir": str(tmp_path / "spool"), "batch_max_ms": 10},
        "local_model": {"enabled": False},
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


def streamed_events(gw: GatewayThread, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST ``body`` to the gateway's ``path`` as a stream and return its SSE ``data:`` payloads, decoded
    (the response must be a 200: a stream cut mid-way is reported inside it)."""
    import httpx
    import orjson

    with (
        httpx.Client(base_url=gw.base_url, timeout=20) as http,
        http.stream("POST", path, json=body) as r,
    ):
        assert r.status_code == 200
        return [orjson.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
