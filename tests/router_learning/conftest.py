"""Fixtures for the router learning tests: the shared routing data (skip cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.offline.datasets import default_data_dir

DATA = default_data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "routellm" / "mmlu_dev.csv").exists() or not (DATA / "routerbench").is_dir():
        pytest.skip(f"routing data not found at {DATA.resolve()}")
    return DATA
