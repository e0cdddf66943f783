"""The engine: the scheduler loop on its own thread, fed by thread-safe submissions, feeding asyncio consumers.

Why a thread: a forward is one long C++ call during which torch releases the GIL, so the server's event
loop keeps accepting connections and writing SSE while the model runs. All engine state (queues,
caches, sequences) is touched only by the engine thread; other threads talk to it through `_inbox`
(a deque, thread-safe for append/popleft) and a wake-up `Event`, and receive events through sinks. For
asyncio consumers the events of one step are delivered with a single ``call_soon_threadsafe`` per event
loop, so the loop is woken once per step, not once per token.

The parts, vLLM v1 style: the `Scheduler` (scheduler.py) decides which sequences run this step and with
how many tokens (continuous batching, chunked prefill, paged KV blocks for the attention layers, SSM
slots, prefix cache); the `ModelRunner` (model_runner.py) describes each forward with flat metadata, runs
it and samples; `OutputDelivery` (output.py) hands the step's events to their consumers.

One step = schedule -> one decode forward for every decoding sequence (one token each; a CUDA graph
replay on the GPU) -> prefill forward(s) for the step's chunks -> one batched sampling call -> stop rules,
detokenization (`Sequence.append`), events. `step()` can also be driven by hand (no thread) in tests.

Prompt logprobs (``SamplingParams.prompt_logprobs``): choice 0 of such a request prefills its whole prompt
(no prefix-cache hit while they are missing), in prefill groups of their own whose forward keeps the logits
of every position (`ModelRunner.execute_prefill`); each chunk's logprobs are stored on the `Request`, and
each choice's first delta carries them. A ``max_tokens`` 0 request ends when its prompt is prefilled,
without sampling (at once when it asks for no prompt logprobs).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cache import MambaState
from ..model import JambaForCausalLM
from .config import EngineConfig, MemoryPlan, plan_memory
from .errors import EngineClosed, EngineOverloaded, InvalidRequest, PromptTooLong, RequestCancelled
from .kv_blocks import BlockAllocator, blocks_for
from .model_runner import ModelRunner, PromptLogprobsRow
from .output import (
    AsyncSink,
    ChoiceResult,
    GenerationResult,
    OutputDelivery,
    RequestStream,
    SyncRequestStream,
    SyncSink,
)
from .sampler import SampleRow, SamplingParams, TokenLogprob, choice_seed, make_generator
from .scheduler import Chunk, Scheduler
from .sequence import Delta, Event, Failed, Finished, Request, Sequence, Status, TokenizerLike
from .ssm_slots import SnapshotStore, SSMSlotPool

log = logging.getLogger("local_model.engine")


# ============================================================================ stats


@dataclass
class LoadSignals:
    """What a router needs to judge how busy this engine is."""

    queue_depth: int
    running: int
    free_ssm_slots: int
    total_ssm_slots: int
    free_kv_blocks: int
    total_kv_blocks: int
    tokens_per_s: float


class EngineStats:
    """Counters updated by the engine thread; read (approximately, without locks) by metrics."""

    def __init__(self) -> None:
        self.prompt_tokens = 0  # prompt tokens of submitted requests
        self.prefill_tokens = 0  # tokens actually run through prefill (after prefix-cache hits)
        self.generated_tokens = 0
        self.requests_finished = 0
        self.requests_cancelled = 0
        self.steps = 0
        self.step_seconds = 0.0
        self._window: collections.deque[tuple[float, int]] = collections.deque()

    def record_step(self, now: float, seconds: float, generated: int) -> None:
        self.steps += 1
        self.step_seconds += seconds
        self._window.append((now, generated))
        while self._window and now - self._window[0][0] > 10.0:
            self._window.popleft()

    def tokens_per_s(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        window = [(t, n) for t, n in list(self._window) if now - t <= 10.0]
        if not window:
            return 0.0
        span = max(now - window[0][0], 1.0)  # a lone burst does not read as a huge rate
        return sum(n for _, n in window) / span


# ============================================================================ the engine


class Engine:
    """Continuous-batching inference for a `JambaForCausalLM` with paged KV and pooled Mamba state."""

    def __init__(
        self,
        model: JambaForCausalLM,
        tokenizer: TokenizerLike | None = None,
        config: EngineConfig | None = None,
        *,
        model_name: str = "local",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.model_name = model_name
        mc = model.config
        w = model.lm_head.weight
        self.device, self.dtype = w.device, w.dtype
        self.plan: MemoryPlan = plan_memory(mc, self.config, self.dtype)
        p = self.plan
        self.allocator = BlockAllocator(p.num_blocks, p.block_size)
        kernels = _kernel_bundle(model)
        bucketed = _bucketed_decode(model, self.config.decode_step, self.device, kernels)
        scratch = 1 if bucketed else 0  # one SSM slot and one KV block for the padding rows of a bucket
        self.slots = SSMSlotPool(
            mc,
            p.num_slots,
            device=self.device,
            dtype=self.dtype,
            ssm_dtype=self.config.ssm_dtype,
            scratch=scratch,
        )
        self.snapshots = SnapshotStore(
            mc, p.num_snapshots, device=self.device, dtype=self.dtype, ssm_dtype=self.config.ssm_dtype
        )
        self.scheduler = Scheduler(
            self.allocator,
            self.slots,
            self.snapshots,
            max_num_seqs=p.num_slots,
            prefill_chunk_tokens=self.config.prefill_chunk_tokens,
            snapshot_interval=self.config.snapshot_interval,
            prefix_caching=self.config.prefix_caching,
            watermark_blocks=max(1, p.num_blocks // 100),
        )
        # One flat K and V pool per attention layer; Mamba layers map to their slot pool.
        kv_shape = ((p.num_blocks + scratch) * p.block_size, mc.num_key_value_heads, mc.attn_head_dim)
        self._kv_pools: dict[int, tuple[torch.Tensor, torch.Tensor]] = {
            i: (
                torch.zeros(kv_shape, device=self.device, dtype=self.dtype),
                torch.zeros(kv_shape, device=self.device, dtype=self.dtype),
            )
            for i in mc.attention_layer_ids
        }
        self._mamba: dict[int, MambaState] = dict(zip(mc.mamba_layer_ids, self.slots.states, strict=True))
        self.runner = ModelRunner(model, self._kv_pools, self._mamba, p.block_size, self.device)
        if bucketed:
            self.runner.enable_bucketed_decode(
                kernels,
                blocks_for(p.max_model_len, p.block_size),
                scratch_slot=p.num_slots,
                scratch_block=p.num_blocks,
                cuda_graphs=self.config.cuda_graphs,
            )
            if self.runner.bucketed is not None and self.runner.bucketed.use_graphs:
                self.runner.bucketed.capture_buckets(p.num_slots)
        eos = list(mc.eos_token_ids) + (list(tokenizer.eos_token_ids) if tokenizer is not None else [])
        self.eos_ids = frozenset(eos)
        self.stats = EngineStats()
        self._requests: dict[str, Request] = {}  # live requests (added at submit, under _lock)
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._queued = 0  # submitted requests not yet admitted (backpressure), guarded by _lock
        self._lock = threading.Lock()
        self._seq_ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self.output = OutputDelivery()

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: EngineConfig | None = None,
        *,
        device: Any = "cpu",
        dtype: torch.dtype | None = None,
        model_name: str | None = None,
    ) -> Engine:
        """Load a checkpoint directory (config.json + safetensors [+ tokenizer.json]) and build an engine."""
        import local_model

        lm = local_model.load(path, device=device, dtype=dtype)
        return cls(lm.module, lm.tokenizer, config, model_name=model_name or Path(path).name)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="local-model-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; every unfinished request gets `EngineClosed`."""
        self._closed = True
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for req in list(self._requests.values()):
            self._fail(req, EngineClosed("engine shut down"))
        self._inbox.clear()
        self._flush()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        threads = self.config.torch_threads()
        if threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            while not self._stopping:
                try:
                    busy = self.step()
                except Exception as exc:  # a bug or OOM in one step must not kill the server
                    log.exception("engine step failed")
                    self._fail_all(exc)
                    busy = False
                if not busy:
                    self._wake.wait(0.5)
                    self._wake.clear()

    # ------------------------------------------------------------------ submission (any thread)

    def _new_request(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None, sink: Any
    ) -> Request:
        if self._closed:
            raise EngineClosed("engine is shut down")
        vocab = self.model.config.vocab_size
        params.validate(vocab)
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", "prompt")
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", "prompt")
        max_len = self.plan.max_model_len
        if len(prompt_ids) >= max_len:
            raise PromptTooLong(
                f"This model's maximum context length is {max_len} tokens. However, your prompt has "
                f"{len(prompt_ids)} tokens."
            )
        need = blocks_for(min(len(prompt_ids) + params.max_tokens, max_len), self.plan.block_size)
        if need > self.plan.num_blocks - self.scheduler.watermark_blocks:
            raise PromptTooLong(
                f"prompt + max_tokens need {need} KV blocks; the engine has {self.plan.num_blocks}"
            )
        with self._lock:
            if self._queued >= self.config.max_queue:
                raise EngineOverloaded(
                    f"local model queue is full ({self.config.max_queue} waiting requests)",
                    self.config.retry_after_s,
                )
            self._queued += 1
            rid = request_id or f"req-{uuid.uuid4().hex[:16]}"
            req = Request(rid, list(prompt_ids), params, sink)
            self._requests[rid] = req
        return req

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> RequestStream:
        """Queue a request from inside a running event loop; iterate the returned stream for its deltas.

        Raises EngineOverloaded (queue full), PromptTooLong, InvalidRequest, EngineClosed at once."""
        sink = AsyncSink(asyncio.get_running_loop())
        req = self._new_request(prompt_ids, params, request_id, sink)
        self._inbox.append(("submit", req))
        self._wake.set()
        return RequestStream(self, req, sink)

    def submit_sync(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None
    ) -> SyncRequestStream:
        """Like `submit`, for a blocking consumer."""
        sink = SyncSink()
        req = self._new_request(prompt_ids, params, request_id, sink)
        self._inbox.append(("submit", req))
        self._wake.set()
        return SyncRequestStream(self, req, sink)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationResult:
        """Blocking one-shot generation (starts the loop if needed)."""
        self.start()
        return self.submit_sync(prompt_ids, params).result()

    def cancel(self, request_id: str) -> None:
        """Abort a request: its queue place is released now, its sequences' KV blocks and SSM slots at the
        engine's next step (the engine wakes for it)."""
        req = self._requests.get(request_id)
        if req is not None:
            self._mark_admitted(req)
        self._inbox.append(("cancel", request_id))
        self._wake.set()

    # ------------------------------------------------------------------ introspection (any thread)

    def load_signals(self) -> LoadSignals:
        return LoadSignals(
            queue_depth=self._queued,
            running=self.scheduler.num_running,
            free_ssm_slots=self.slots.num_free,
            total_ssm_slots=self.slots.num_slots,
            free_kv_blocks=self.allocator.num_free,
            total_kv_blocks=self.allocator.num_blocks,
            tokens_per_s=self.stats.tokens_per_s(),
        )

    # ------------------------------------------------------------------ the step (engine thread)

    def step(self) -> bool:
        """Run one scheduling step; False when there was nothing to do."""
        t0 = time.perf_counter()
        had_commands = self._drain_inbox()
        plan = self.scheduler.schedule()
        for chunk in plan.prefill:
            self._mark_admitted(chunk.seq.request)
        if plan.empty:
            self._flush()
            return had_commands
        to_sample: list[Sequence] = []
        logits: list[torch.Tensor] = []
        if plan.decode:
            seqs = plan.decode
            logits.append(self._forward([[s.tokens[-1]] for s in seqs], seqs))
            for s in seqs:
                self.scheduler.after_decode(s)
            to_sample.extend(seqs)
        prefilled_only: list[Request] = []  # max_tokens 0: done once the prompt is in
        for group in _group_chunks(plan.prefill):
            out = self._prefill(group)
            keep = []
            for row, c in enumerate(group):
                self.scheduler.after_prefill(c)
                self.stats.prefill_tokens += c.end - c.start
                if c.completes_prefill and c.seq.request.params.max_tokens == 0:
                    prefilled_only.append(c.seq.request)
                elif c.completes_prefill:
                    keep.append(row)
                    to_sample.append(c.seq)
            if keep:
                logits.append(out[keep] if len(keep) < len(group) else out)
        for req in prefilled_only:
            self._finish_unsampled(req)
        generated = 0
        if to_sample:
            rows = [
                SampleRow(s.request.params, s.generator, s.output_ids if s.request.params.adjusts_logits else ())
                for s in to_sample
            ]
            tokens, lps = self.runner.sample(torch.cat(logits) if len(logits) > 1 else logits[0], rows)
            for s, tok, lp in zip(to_sample, tokens, lps, strict=True):
                self._append(s, tok, lp)
            generated = len(to_sample)
        self._flush()
        now = time.monotonic()
        self.stats.record_step(now, time.perf_counter() - t0, generated)
        return True

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        """Drive the loop by hand (no thread) until no work is left."""
        with torch.inference_mode():
            for _ in range(max_steps):
                if not self.step() and not self._inbox:
                    return

    def _forward(self, inputs: list[list[int]], seqs: list[Sequence]) -> torch.Tensor:
        """One forward over ``inputs`` (new tokens per sequence); logits at each row's last token."""
        meta = self.runner.prepare(
            inputs, [s.table.blocks for s in seqs], [s.num_computed for s in seqs], [s.slot for s in seqs]
        )
        return self.runner.execute(meta)

    def _prefill(self, group: list[Chunk]) -> torch.Tensor:
        """One forward over a group of prefill chunks; logits at each row's last token. The prompt logprobs
        the group's chunks compute (`Chunk.prompt_targets`) are stored on their requests."""
        seqs = [c.seq for c in group]
        wanted = tuple(
            PromptLogprobsRow(row, targets, c.seq.request.params.prompt_logprobs or 0)
            for row, c in enumerate(group)
            if (targets := c.prompt_targets)
        )
        meta = self.runner.prepare(
            [c.seq.tokens[c.start : c.end] for c in group],
            [s.table.blocks for s in seqs],
            [s.num_computed for s in seqs],
            [s.slot for s in seqs],
            wanted,
        )
        logits, scored = self.runner.execute_prefill(meta)
        for row, lps in scored.items():
            group[row].seq.request.record_prompt_logprobs(group[row].start, lps)
        return logits

    def _append(self, seq: Sequence, token: int, lp: TokenLogprob | None) -> None:
        req = seq.request
        if seq.finished:  # cancelled during this step
            return
        delta = seq.append(token, lp, self.eos_ids, self.plan.max_model_len)
        self.stats.generated_tokens += 1
        if req.first_token_at is None:
            req.first_token_at = time.monotonic()
        if seq.num_generated == 1:  # the choice's first delta carries the request's prompt logprobs
            delta.prompt_logprobs = req.prompt_logprobs
        if seq.index == 0 and req.params.n > 1 and not req.spawned:
            self._spawn_choices(req)
        self._emit(req, delta)
        if delta.finish_reason is not None:
            self.scheduler.free(seq)
            if len(req.seqs) == req.params.n and all(s.finished for s in req.seqs):
                req.done = True
                self.stats.requests_finished += 1
                self._forget(req)
                self._emit(req, Finished(req.usage()))

    def _finish_unsampled(self, req: Request) -> None:
        """End a ``max_tokens`` 0 request: each choice finishes with "length", no tokens, and the prompt
        logprobs if asked for (one delta per choice). Called once choice 0 has prefilled the prompt, or at
        submission when there is nothing to compute."""
        if req.done:  # cancelled during this step
            return
        for seq in req.seqs:
            if not seq.finished:
                self.scheduler.free(seq)
                seq.finish_reason = "length"
        self._mark_admitted(req)
        for i in range(req.params.n):
            self._emit(req, Delta(i, [], "", None, "length", prompt_logprobs=req.prompt_logprobs))
        req.done = True
        self.stats.requests_finished += 1
        self._forget(req)
        self._emit(req, Finished(req.usage()))

    def _spawn_choices(self, req: Request) -> None:
        """Choices 1..n-1 start once choice 0 has prefilled the prompt, so their prefill is a prefix-cache
        hit up to the last full block (a fork that reuses the cache's sharing and snapshot machinery). A
        seeded request's choice i draws from `choice_seed` (seed, i)."""
        req.spawned = True
        base = req.params.seed
        new = []
        for i in range(1, req.params.n):
            gen = make_generator(None if base is None else choice_seed(base, i), self.device)
            seq = Sequence(next(self._seq_ids), req, i, gen, self.tokenizer)
            req.seqs.append(seq)
            new.append(seq)
        for seq in reversed(new):
            self.scheduler.add(seq, front=True)

    # ------------------------------------------------------------------ commands and delivery

    def _drain_inbox(self) -> bool:
        had = False
        while self._inbox:
            had = True
            kind, item = self._inbox.popleft()
            if kind == "submit":
                req: Request = item
                if req.done:  # cancelled or failed before the engine saw it
                    continue
                self.stats.prompt_tokens += len(req.prompt_ids)
                if req.params.max_tokens == 0 and not req.scores_prompt:  # nothing to compute
                    self._finish_unsampled(req)
                    continue
                seq = Sequence(
                    next(self._seq_ids), req, 0, make_generator(req.params.seed, self.device), self.tokenizer
                )
                req.seqs.append(seq)
                self.scheduler.add(seq)
            elif kind == "cancel":
                req = self._requests.get(item)
                if req is not None:
                    self.stats.requests_cancelled += 1
                    self._fail(req, RequestCancelled(f"request {item} was cancelled"))
        return had

    def _fail(self, req: Request, error: BaseException) -> None:
        """End a request now: free its memory, tell its consumer."""
        if req.done:
            return
        for seq in req.seqs:
            if not seq.finished:
                self.scheduler.free(seq)
        self._mark_admitted(req)
        req.done = True
        req.cancelled = isinstance(error, RequestCancelled)
        self._forget(req)
        self._emit(req, Failed(error))

    def _mark_admitted(self, req: Request) -> None:
        """The request no longer counts against ``max_queue`` (admitted, cancelled or failed)."""
        with self._lock:
            if not req.admitted:
                req.admitted = True
                self._queued -= 1

    def _forget(self, req: Request) -> None:
        with self._lock:
            if self._requests.get(req.request_id) is req:
                del self._requests[req.request_id]

    def _fail_all(self, error: BaseException) -> None:
        for req in list(self._requests.values()):
            self._fail(req, error)
        self._flush()

    def _emit(self, req: Request, event: Event) -> None:
        self.output.emit(req.sink, event)

    def _flush(self) -> None:
        """Deliver this step's events (one wake-up per asyncio loop); a consumer whose loop is gone has its
        requests ended, which frees their memory."""
        for loop in self.output.flush():
            for req in list(self._requests.values()):
                if isinstance(req.sink, AsyncSink) and req.sink.loop is loop:
                    self._fail(req, EngineClosed("consumer event loop closed"))
            self.output.clear()

    # ------------------------------------------------------------------ memory accounting (tests, docs)

    def ssm_bytes_per_sequence(self) -> int:
        return self.plan.ssm_bytes_per_seq

    def kv_bytes_per_token(self) -> int:
        return self.plan.kv_bytes_per_block // self.plan.block_size

    def sequence_memory_bytes(self, seq: Sequence) -> tuple[int, int]:
        """(Mamba bytes, KV bytes) a sequence holds right now."""
        ssm = self.plan.ssm_bytes_per_seq if seq.slot is not None else 0
        return ssm, len(seq.table) * self.plan.kv_bytes_per_block

    def running_sequences(self) -> list[Sequence]:
        return list(self.scheduler.running)

    def is_idle(self) -> bool:
        return not self._inbox and not self.scheduler.running and not self.scheduler.waiting


def _bucketed_decode(
    model: torch.nn.Module, decode_step: bool | None, device: torch.device, kernels: object | None
) -> bool:
    """Whether decode steps run per batch bucket (`ModelRunner.enable_bucketed_decode`): on request
    (``decode_step=True``) for Jamba and the Mamba-2 families; by default (None) on CUDA for the Mamba-2
    families and for Jamba with the Triton bundle (`DecodeStep` calls the bundle's kernels directly; the
    families' step runs their own forward). See `EngineConfig.decode_step`."""
    from ..families.common import HybridForCausalLM

    if decode_step is not None:
        return decode_step and isinstance(model, (JambaForCausalLM, HybridForCausalLM))
    if device.type != "cuda":
        return False
    if isinstance(model, JambaForCausalLM):
        return getattr(kernels, "name", "") == "triton"
    return isinstance(model, HybridForCausalLM)


def _kernel_bundle(model: torch.nn.Module) -> object | None:
    """The kernel bundle the model's layers run (set at load: Triton on CUDA, the references on CPU)."""
    return next((m.kernels for m in model.modules() if hasattr(m, "kernels")), None)


def _group_chunks(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Prefill groups: chunks that compute prompt logprobs (logits at every position) apart from the others
    (logits at the last position only), each batched by length (`_group_by_length`)."""
    scoring = [bool(c.prompt_targets) for c in chunks]
    plain = [c for c, s in zip(chunks, scoring, strict=True) if not s]
    scored = [c for c, s in zip(chunks, scoring, strict=True) if s]
    return _group_by_length(plain) + _group_by_length(scored)


def _group_by_length(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Batch prefill chunks of similar length so right-padding wastes at most ~25% of the work."""
    if len(chunks) <= 1:
        return [chunks] if chunks else []
    ordered = sorted(chunks, key=lambda c: c.end - c.start, reverse=True)
    groups: list[list[Chunk]] = []
    for c in ordered:
        n = c.end - c.start
        if groups:
            g = groups[-1]
            width = g[0].end - g[0].start
            real = sum(x.end - x.start for x in g) + n
            if width * (len(g) + 1) <= 1.25 * real:
                g.append(c)
                continue
        groups.append([c])
    return groups


__all__ = [
    "ChoiceResult",
    "Engine",
    "EngineConfig",
    "GenerationResult",
    "LoadSignals",
    "RequestStream",
    "SamplingParams",
    "Status",
    "SyncRequestStream",
]
