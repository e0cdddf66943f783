"""What the fake provider answers: reply text, the planned choices, logprobs, embeddings, schema examples.

Replies are deterministic functions of the request (see `FakeProviderConfig.reply_mode`); a
request can always ask for an exact length with the fault item ``tokens:<n>``.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from backends.fake_provider.config import FakeProviderConfig, count_tokens, tokenize
from backends.fake_provider.faults import MAGIC_RE, Fault

LOREM_WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "basil",
    "cedar",
    "dune",
    "ember",
    "fern",
    "grove",
    "harbor",
    "island",
    "jade",
    "kelp",
    "lagoon",
    "meadow",
    "nectar",
    "orchid",
    "pebble",
    "quartz",
    "river",
    "sage",
    "thistle",
    "umber",
    "valley",
    "willow",
    "yarrow",
    "zephyr",
)


@dataclass(slots=True)
class Choice:
    """The planned answer for one choice: content tokens or a tool call, and why it ended."""

    tokens: list[str]
    finish: str  # OpenAI finish_reason: "stop" | "length" | "tool_calls"
    tool: tuple[str, str, str] | None = None  # (call id, function name, arguments JSON)
    stop_hit: str | None = None  # the stop sequence that ended it, if any

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens) if self.tool is None else count_tokens(self.tool[2])


def text_of(content: Any) -> str:
    """Plain text of an OpenAI or Anthropic message content (string or list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif part.get("type") == "tool_result":
                    parts.append(text_of(part.get("content")))
        return " ".join(p for p in parts if p)
    return ""


def last_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for msg in reversed(messages):
            if isinstance(msg, dict) and msg.get("role") == "user":
                return text_of(msg.get("content"))
        for msg in reversed(messages):
            if isinstance(msg, dict):
                return text_of(msg.get("content"))
    return ""


def example_for_schema(schema: Any, depth: int = 0) -> Any:
    """A deterministic value that satisfies a (simple) JSON schema: for tool arguments/json_schema."""
    if not isinstance(schema, dict) or depth > 8:
        return "fake"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_for_schema(schema[key][0], depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ == "object" or (typ is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: example_for_schema(v, depth + 1) for k, v in props.items()}
    if typ == "array":
        items = schema.get("items")
        return [example_for_schema(items, depth + 1)] if isinstance(items, dict) else []
    return {"string": "fake", "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(typ, "fake")


def lorem(n: int, key: str) -> str:
    rng = random.Random(key)
    return " ".join(rng.choice(LOREM_WORDS) for _ in range(n))


def apply_stop(text: str, stop: Any) -> tuple[str, str | None]:
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str) and s]
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return (text, None) if best is None else (text[: best[0]], best[1])


def logprob(i: int) -> float:
    return -0.01 * ((i * 7) % 13 + 1)


def chat_logprobs_entry(tok: str, i: int, top: int, shift: float = 0.0) -> dict[str, Any]:
    lp = logprob(i) + shift
    tops = [{"token": tok, "logprob": lp, "bytes": list(tok.encode())}]
    tops += [
        {"token": f"alt{k}", "logprob": lp - k, "bytes": list(f"alt{k}".encode())} for k in range(1, top)
    ]
    return {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": tops[:top]}


# The echoed prompt's tokens are less likely than the model's own answer (a random prompt surprises a model
# more than its own greedy tokens do): a score that reads them by mistake comes out lower.
PROMPT_LOGPROB_SHIFT = -2.0

LegacyEntry = tuple[str, float | None]  # a token of a legacy ``logprobs`` object and its log-probability


def prompt_entries(tokens: Sequence[str]) -> list[LegacyEntry]:
    """An echoed prompt's tokens with their log-probabilities; the first has none (nothing precedes it)."""
    return [(t, None if i == 0 else logprob(i) + PROMPT_LOGPROB_SHIFT) for i, t in enumerate(tokens)]


def answer_entries(tokens: Sequence[str]) -> list[LegacyEntry]:
    """A generated answer's tokens with their log-probabilities."""
    return [(t, logprob(i)) for i, t in enumerate(tokens)]


def completion_logprobs(entries: Sequence[LegacyEntry], top: int, offset: int) -> dict[str, Any]:
    """The legacy ``logprobs`` object of ``entries`` (a whole choice's, or one streamed chunk's), as OpenAI
    and vLLM send it: ``text_offset`` where each token starts in the choice's whole text (from ``offset``),
    and each ``top_logprobs`` dict holds the token itself with its ``token_logprobs`` value, then ``top - 1``
    less likely alternatives (null where the token's logprob is null: an echoed prompt's first)."""
    offsets = []
    pos = offset
    for t, _ in entries:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": [t for t, _ in entries],
        "token_logprobs": [lp for _, lp in entries],
        "top_logprobs": [None if lp is None else _top_dict(t, lp, top) for t, lp in entries],
        "text_offset": offsets,
    }


def _top_dict(token: str, lp: float, top: int) -> dict[str, float]:
    out = {token: lp}
    for k in range(1, top):
        out.setdefault(f"alt{k}", lp - k)
    return out


def embed(key: bytes, dim: int) -> list[float]:
    """Deterministic unit vector from a hash of the input."""
    raw = struct.unpack(f"<{dim}H", hashlib.shake_256(key).digest(dim * 2))
    vec = [x / 32767.5 - 1.0 for x in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def reply_text(cfg: FakeProviderConfig, prompt_text: str, seed: Any, index: int, fault: Fault) -> str:
    """The reply for choice `index`, by `cfg.reply_mode` (or exactly `fault.reply_tokens` words)."""
    if fault.reply_tokens is not None:
        return lorem(fault.reply_tokens, f"{prompt_text}|{seed}|{index}")
    if cfg.reply_mode == "fixed":
        return cfg.reply_text
    if cfg.reply_mode == "lorem":
        return lorem(cfg.reply_tokens, f"{prompt_text}|{seed}|{index}")
    text = (
        MAGIC_RE.sub(b"", prompt_text.encode()).decode().strip()
        if "[[fault:" in prompt_text
        else prompt_text.strip()
    )
    if not text:
        return "OK"
    toks = tokenize(text)
    return "".join(toks[: cfg.max_reply_tokens]) if len(toks) > cfg.max_reply_tokens else text


def plan_choices(
    cfg: FakeProviderConfig,
    prompt_text: str,
    *,
    n: int,
    max_tokens: int | None,
    stop: Any,
    seed: Any,
    fault: Fault,
    tool: tuple[str, dict[str, Any]] | None = None,
    json_schema: Any = None,
    json_mode: bool = False,
    id_prefix: str = "call_",
) -> list[Choice]:
    """The planned answer of each of `n` choices: a tool call, or reply tokens cut by `stop`/`max_tokens`."""
    out = []
    for i in range(n):
        if tool is not None:
            args = orjson.dumps(example_for_schema(tool[1])).decode()
            cid = (
                f"{id_prefix}fake{hashlib.blake2s(f'{prompt_text}|{i}'.encode(), digest_size=8).hexdigest()}"
            )
            out.append(Choice([], "tool_calls", (cid, tool[0], args)))
            continue
        text = reply_text(cfg, prompt_text, seed, i, fault)
        if json_schema is not None:
            text = orjson.dumps(example_for_schema(json_schema)).decode()
        elif json_mode:
            text = orjson.dumps({"reply": text}).decode()
        text, hit = apply_stop(text, stop)
        toks = tokenize(text)
        if max_tokens is not None and len(toks) > max_tokens:
            out.append(Choice(toks[:max_tokens], "length"))
        else:
            out.append(Choice(toks, "stop", stop_hit=hit))
    return out
