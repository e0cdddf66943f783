"""Fixtures for the local_model tests (their helpers live in tests.support.jamba)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import local_model
from tests.support.jamba import CASES, Case, build_hf


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Any:
    """These models are tiny: one intra-op thread is faster, and far faster on a busy 2-core machine
    (two spinning OpenMP threads per op oversubscribe the cores). Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    name = request.param
    hf = build_hf(name, seed=sorted(CASES).index(name))
    path = tmp_path_factory.mktemp(f"hf_{name}")
    hf.save_pretrained(path)
    return Case(name=name, hf=hf, path=path, lm=local_model.load(path))


@pytest.fixture(scope="session")
def moe_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """The MoE/GQA case on its own (for layout and sharding tests)."""
    hf = build_hf("moe_gqa", seed=7)
    path = tmp_path_factory.mktemp("hf_moe_single")
    hf.save_pretrained(path)
    return Case(name="moe_gqa", hf=hf, path=path, lm=local_model.load(path))
