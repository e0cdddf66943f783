"""Deployments and helpers shared by the routing tests (pure values, no servers)."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path

import pytest

from common.types import DeploymentConfig
from router.offline.datasets import default_data_dir
from tests.support.deployments import NOON, make_deployments


@pytest.fixture()
def deployments() -> list[DeploymentConfig]:
    return make_deployments()


@pytest.fixture()
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture()
def now() -> datetime:
    return NOON


DATA = default_data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared routing data sets (skip cleanly when absent)."""
    if not (DATA / "routellm" / "mmlu_dev.csv").exists() or not (DATA / "routerbench").is_dir():
        pytest.skip(f"routing data not found at {DATA.resolve()}")
    return DATA
