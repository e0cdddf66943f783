"""Fixtures for backend tests: a fresh fake provider per test (starting one takes ~1 ms)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backends.fake_provider import FakeProvider


@pytest.fixture()
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as fp:
        yield fp
