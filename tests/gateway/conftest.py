"""Gateway fixtures: a real fake provider and a real gateway, both on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.fake_provider import FakeProviderThread
from gateway.config import Settings
from tests.gateway.harness import GatewayThread, running_gateway


@pytest.fixture()
def fake_provider() -> Iterator[FakeProviderThread]:
    with FakeProviderThread() as fp:
        yield fp


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


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    from requestlog.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    return url


@pytest.fixture()
def gateway(fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path)) as gw:
        yield gw
