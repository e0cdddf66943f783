"""Fixtures for the training tests: single-threaded torch (tiny models, busy 2-core machines) and a toy
corpus in the format of ``local_model/data/prepare.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

STORY = (
    "Alice was beginning to get very tired of sitting by her sister on the bank. "
    "The rabbit ran past her and looked at its watch. "
    '"Oh dear! I shall be late!" said the rabbit, and it hurried down a large hole. '
    "Alice followed it, and she fell down and down into the dark. "
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """One intra-op thread: far faster than two spinning OpenMP threads on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.jsonl / eval.jsonl with plain and chat documents (repetitive, so a few steps learn it)."""
    out = tmp_path_factory.mktemp("corpus")
    docs = []
    for i in range(60):
        docs.append({"source": "alice", "text": STORY * (1 + i % 3)})
        docs.append({
            "source": "wordnet-chat",
            "messages": [
                {"role": "user", "content": "What is a rabbit?"},
                {"role": "assistant", "content": "A rabbit is a small animal with long ears."},
            ],
        })  # fmt: skip
    for name, part in (("train.jsonl", docs[:100]), ("eval.jsonl", docs[100:])):
        (out / name).write_text("".join(json.dumps(d) + "\n" for d in part))
    return out
