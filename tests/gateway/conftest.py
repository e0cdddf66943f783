"""Gateway fixtures: a real fake provider and a real gateway, both on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayThread, running_gateway


@pytest.fixture()
def fake_provider() -> Iterator[FakeProviderThread]:
    with FakeProviderThread() as fp:
        yield fp



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
