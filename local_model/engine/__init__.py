"""Serving engine for the local hybrid model: continuous batching over paged attention KV and pooled
Mamba state, chunked prefill, a hybrid-aware prefix cache, per-request sampling, and a background step
thread with asyncio-friendly streams.

Usage::

    from local_model.engine import Engine, EngineConfig, SamplingParams
    engine = Engine.from_checkpoint("/path/to/ckpt", EngineConfig(memory_budget_mb=256)).start()
    stream = engine.submit(prompt_ids, SamplingParams(max_tokens=64, temperature=0))  # in an event loop
    async for delta in stream: ...          # Delta(index, token_ids, text, logprobs, finish_reason)
    stream.cancel()                          # frees the sequence's KV blocks and SSM slot at the next step
    engine.shutdown()

Modules: `config` (settings, memory split), `kv_blocks` (block allocator, block tables, prefix hashes),
`ssm_slots` (Mamba slot pool, snapshots), `prefix_cache` (hybrid prefix reuse), `paged` (paged attention
through `KVCache.attend`), `scheduler` (batching, admission, chunking, preemption), `sampler`, `sequence`
(requests, detokenizer, stop rules, events), `model_runner` (a step's flat metadata, the forward,
sampling), `output` (event delivery, request streams), `engine` (the step loop and thread), `openai_api` (OpenAI
request/response shapes shared by `local_model.server` and `backends.local_backend`), `checkpoint`
(path or "shipped" resolution).
"""

from __future__ import annotations

from .config import EngineConfig, MemoryPlan
from .engine import ChoiceResult, Engine, GenerationResult, LoadSignals, RequestStream, SyncRequestStream
from .errors import (
    EngineClosed,
    EngineError,
    EngineOverloaded,
    InvalidRequest,
    PromptTooLong,
    RequestCancelled,
)
from .sampler import SamplingParams, TokenLogprob
from .sequence import Delta, Usage

__all__ = [
    "ChoiceResult",
    "Delta",
    "Engine",
    "EngineClosed",
    "EngineConfig",
    "EngineError",
    "EngineOverloaded",
    "GenerationResult",
    "InvalidRequest",
    "LoadSignals",
    "MemoryPlan",
    "PromptTooLong",
    "RequestCancelled",
    "RequestStream",
    "SamplingParams",
    "SyncRequestStream",
    "TokenLogprob",
    "Usage",
]
