"""Fixtures for the router learning tests: the shared routing data (skip cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "routing"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "routellm" / "mmlu_dev.csv").exists() or not (DATA / "routerbench").is_dir():
        pytest.skip(f"routing data not found at {DATA.resolve()}")
    return DATA
