"""Gateway fixtures: a real fake provider and a real gateway, both on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.fake_provider import FakeProviderThread
from tests.support.db import migrated_sqlite_url
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayThread, running_gateway


@pytest.fixture()
def fake_provider() -> Iterator[FakeProviderThread]:
    with FakeProviderThread() as fp:
        yield fp



@pytest.fixture()
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    return migrated_sqlite_url(sqlite_template, tmp_path / "gw.db")


@pytest.fixture()
def gateway(fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path)) as gw:
        yield gw
