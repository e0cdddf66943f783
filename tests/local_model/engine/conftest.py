"""Fixtures for the engine/server tests: a tiny random hybrid checkpoint (tests.support.engine) on disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import local_model
from local_model.engine import Engine, EngineConfig
from tests.support.engine import build_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster, and robust on a busy 2-core machine (restored after
    each module, so other test folders keep their setting). Engine threads set their own (EngineConfig)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_ckpt: Path) -> local_model.LocalModel:
    return local_model.load(tiny_ckpt)


@pytest.fixture()
def make_engine(tiny_lm: local_model.LocalModel) -> Iterator[Callable[..., Engine]]:
    """Engines over the shared tiny model (weights are read-only; caches are per engine)."""
    made: list[Engine] = []

    def make(**cfg: Any) -> Engine:
        base = dict(memory_budget_mb=16, max_num_seqs=16, block_size=8, prefill_chunk_tokens=64,
                    snapshot_interval=32)
        e = Engine(tiny_lm.module, tiny_lm.tokenizer, EngineConfig(**{**base, **cfg}), model_name="tiny")
        made.append(e)
        return e

    yield make
    for e in made:
        e.shutdown()
