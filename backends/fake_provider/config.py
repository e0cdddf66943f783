"""What a fake provider instance is configured with, what a token is, and what it records.

Tokens are "words of at most 8 characters with their leading whitespace" (`tokenize`): cheap,
deterministic, and the concatenation of a reply's tokens is exactly the reply, so streamed
content chunks are one token each and usage counts always match what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FakeProviderConfig", "RecordedRequest", "count_tokens", "tokenize"]

_TOKEN_RE = re.compile(r"\s*\S{1,8}|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into fake tokens: runs of ≤8 non-space chars with their leading whitespace."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Number of fake tokens in `text` (see `tokenize`)."""
    return len(_TOKEN_RE.findall(text)) if text else 0


@dataclass(slots=True)
class FakeProviderConfig:
    """Behaviour of one fake provider instance.

    reply_mode:
      * "echo": the reply is the last user message's text (capped at `max_reply_tokens`;
        "OK" when there is no text);
      * "fixed": always `reply_text`;
      * "lorem": `reply_tokens` deterministic words seeded by the prompt, `seed` and choice index.
    A request can always ask for an exact length with the fault item ``tokens:<n>``.
    """

    models: dict[str, int] = field(default_factory=lambda: {"fake-model": 8192, "fake-small": 512})
    default_context_window: int = 8192
    strict_models: bool = False  # unknown model → 404 model_not_found instead of being served
    reply_mode: Literal["echo", "fixed", "lorem"] = "echo"
    reply_text: str = "This is a fake reply."
    reply_tokens: int = 16
    max_reply_tokens: int = 256
    embedding_dim: int = 64
    api_key: str | None = None  # when set, requests must carry it (Bearer or x-api-key)
    record_requests: int = 200  # how many recent requests `requests` keeps
    logprob_shift: float = 0.0  # added to every chat token's log-probability: below 0, a less sure model
    # vLLM's convention: every choice carries `stop_reason`, the stop string that ended it (else null)
    vllm_stop_reason: bool = False


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake provider saw it (for assertions on what the gateway sent)."""

    method: str
    path: str
    model: str | None
    body: Any
    headers: Mapping[str, str]
