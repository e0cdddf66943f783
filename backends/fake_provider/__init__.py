"""A fast, deterministic fake LLM provider: a real HTTP server on 127.0.0.1 for tests and benchmarks.

Why a real server and not mocks: the gateway's upstream clients (aiohttp, httpx, litellm, the
official SDKs) must be exercised over real sockets — keep-alive, chunked SSE, connection cuts,
timeouts — and the gateway benchmark needs a zero-latency upstream to measure our own overhead.
So per-request work is kept tiny: no router, bodies built straight from dicts with orjson, a
whole stream written in one `write` when no per-chunk latency is asked for, and no access log.

Speaks:
  * OpenAI ``POST /v1/chat/completions`` (stream / non-stream; n, max_tokens /
    max_completion_tokens → finish_reason "length", stop, tools/tool_choice → tool_calls,
    response_format json_object / json_schema → valid JSON text, logprobs/top_logprobs, seed,
    stream_options.include_usage), ``POST /v1/completions`` (stream / non-stream, echo, logprobs),
    ``POST /v1/embeddings`` (deterministic unit vectors from a hash of the input; float/base64,
    dimensions), ``GET /v1/models`` and ``GET /v1/models/{id}``;
  * Anthropic ``POST /v1/messages`` (stream / non-stream, the exact event sequence
    message_start, content_block_start, ping, content_block_delta…, content_block_stop,
    message_delta (with usage), message_stop; tools → tool_use blocks; stop_sequences).

Replies are deterministic functions of the request (see `FakeProviderConfig.reply_mode`).
Tokens are "words of at most 8 characters with their leading whitespace" (`tokenize`): cheap,
deterministic, and the concatenation of a reply's tokens is exactly the reply, so streamed
content chunks are one token each and usage counts always match what was sent.

Faults (see `backends.fake_provider.faults` for the full grammar) can be set for the whole
server (`set_faults`, `fail_next`, ``POST /_control/faults``) or per request with the header
``x-fake-fault: <spec>`` or the magic string ``[[fault:<spec>]]`` anywhere in the body.

Control API (JSON): ``GET /_control/stats``, ``POST /_control/stats/reset``,
``GET|POST|DELETE /_control/faults``, ``GET /_control/requests`` (recent request bodies),
``GET /health``.

Use: ``async with FakeProvider() as fp: fp.base_url`` in async tests; `FakeProviderThread` for
sync tests; `FakeProviderProcess` (or ``python -m backends.fake_provider --port 9001``) for a
separate process, e.g. in benchmarks.

Modules: `config` (configuration, tokens, recorded requests), `replies` (what is answered),
`wire` (content types, SSE framing), `errors` (error bodies), `faults` (the fault grammar),
`core` (the shared request pipeline and fault application), `openai_api` / `anthropic_api`
(the endpoints and their stream events), `control` (control API, counters), `server`
(`FakeProvider`: lifecycle and routing), `runners` (thread / subprocess), `cli` (``python -m``).
"""

from __future__ import annotations

from backends.fake_provider.cli import main
from backends.fake_provider.config import FakeProviderConfig, RecordedRequest, count_tokens, tokenize
from backends.fake_provider.faults import Fault, FaultSpecError, FaultState, parse_fault
from backends.fake_provider.runners import FakeProviderProcess, FakeProviderThread
from backends.fake_provider.server import FakeProvider

__all__ = [
    "FakeProvider",
    "FakeProviderConfig",
    "FakeProviderProcess",
    "FakeProviderThread",
    "Fault",
    "FaultSpecError",
    "FaultState",
    "RecordedRequest",
    "count_tokens",
    "main",
    "parse_fault",
    "tokenize",
]
