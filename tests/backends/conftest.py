"""Fixtures for backend tests: a fresh fake provider per test (starting one takes ~1 ms)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.fake_provider import FakeProvider
from tests.support.engine import build_checkpoint


@pytest.fixture()
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as fp:
        yield fp


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random hybrid checkpoint with a tokenizer, for the local backend."""
    return build_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"))
