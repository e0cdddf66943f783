"""Continuous batching: who runs each step, admission, chunked prefill, preemption, prefix reuse.

Every step (see `Scheduler.schedule`):

1. **Decode** every running sequence that is past its prefill (one token each). A sequence crossing into a
   new KV block gets one; if none is left the *newest* running sequence is preempted (recompute: its
   blocks and SSM slot are freed at once and it goes back to the head of the queue; when re-admitted it
   prefills prompt + generated tokens again, helped by the prefix cache, and continues with the same
   generator, so its output is unaffected). Recompute rather than swap: on CPU "swap" would be a copy
   within the same RAM, and a hybrid's Mamba state is tiny, so recompute is cheap and simple.
2. **Prefill** at most ``prefill_chunk_tokens`` prompt tokens in total, oldest first: running prefills
   continue, then waiting sequences are admitted while an SSM slot, ``max_num_seqs`` and enough KV blocks
   for their whole prompt (plus a small watermark) are available. So a long prompt delays running
   decodes by at most one chunk per step.

Chunks never cross a *stop point* (`PrefixCache.next_stop`), where the prefix cache snapshots the Mamba
state next to the prefix's KV blocks; admission attaches the longest cached prefix (`PrefixCache.attach`)
and starts the prefill after it, except for a request whose prompt logprobs are still to be computed: it
prefills its whole prompt (the logits of a cached prefix were never kept). See prefix_cache.py.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from dataclasses import dataclass, field

from .kv_blocks import BlockAllocator, OutOfBlocks, blocks_for
from .prefix_cache import PrefixCache, PrefixStats
from .sequence import Sequence, Status
from .ssm_slots import SnapshotStore, SSMSlotPool


@dataclass(slots=True)
class Chunk:
    seq: Sequence
    start: int
    end: int

    @property
    def completes_prefill(self) -> bool:
        return self.end == self.seq.prefill_target

    @property
    def prompt_targets(self) -> list[int]:
        """The prompt tokens whose logprobs this chunk computes (choice 0 of a request asking for prompt
        logprobs; the other choices share choice 0's)."""
        return self.seq.request.prompt_targets(self.start, self.end) if self.seq.index == 0 else []


@dataclass(slots=True)
class StepPlan:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[Chunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


class Scheduler:
    def __init__(
        self,
        allocator: BlockAllocator,
        slots: SSMSlotPool,
        snapshots: SnapshotStore,
        *,
        max_num_seqs: int,
        prefill_chunk_tokens: int,
        snapshot_interval: int,
        prefix_caching: bool = True,
        watermark_blocks: int = 1,
    ) -> None:
        self.allocator = allocator
        self.slots = slots
        self.block_size = allocator.block_size
        self.max_num_seqs = max_num_seqs
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.watermark_blocks = watermark_blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.prefix_cache = PrefixCache(allocator, slots, snapshots, snapshot_interval=snapshot_interval,
                                        enabled=prefix_caching)
        self.num_preemptions = 0
        self._order = itertools.count()

    # ------------------------------------------------------------------ queue management

    def add(self, seq: Sequence, front: bool = False) -> None:
        seq.status = Status.WAITING
        if front:
            self.waiting.appendleft(seq)
        else:
            self.waiting.append(seq)

    def free(self, seq: Sequence) -> None:
        """Release everything a sequence holds (finish, cancel, preemption) and drop it from the queues."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)
        seq.table.free(self.allocator)
        if seq.slot is not None:
            self.slots.free(seq.slot)
            seq.slot = None
        seq.status = Status.FINISHED

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        self.running.remove(seq)
        seq.table.free(self.allocator)
        assert seq.slot is not None
        self.slots.free(seq.slot)
        seq.slot = None
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.add(seq, front=True)
        plan.preempted.append(seq)

    # ------------------------------------------------------------------ the step plan

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        self._schedule_decodes(plan)
        self._schedule_prefills(plan)
        return plan

    def _schedule_decodes(self, plan: StepPlan) -> None:
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or not seq.is_decoding:
                continue
            while True:
                try:
                    seq.table.ensure(self.allocator, seq.num_computed + 1)
                    plan.decode.append(seq)
                    break
                except OutOfBlocks:
                    victim = self.running[-1]
                    if victim in plan.decode:
                        plan.decode.remove(victim)
                    self._preempt(victim, plan)
                    if victim is seq:
                        break

    def _schedule_prefills(self, plan: StepPlan) -> None:
        budget = self.prefill_chunk_tokens
        for seq in list(self.running):
            if budget <= 0:
                return
            if seq.status is not Status.RUNNING or seq.num_computed >= seq.prefill_target:
                continue
            chunk = self._chunk(seq, budget, plan)
            if chunk is not None:
                plan.prefill.append(chunk)
                budget -= chunk.end - chunk.start
        while budget > 0 and self.waiting and self._can_admit(self.waiting[0]):
            seq = self.waiting.popleft()
            self._admit(seq)
            chunk = self._chunk(seq, budget, plan)
            if chunk is None:  # cannot happen right after a successful admission check; be safe
                break
            plan.prefill.append(chunk)
            budget -= chunk.end - chunk.start

    def _chunk(self, seq: Sequence, budget: int, plan: StepPlan) -> Chunk | None:
        """The next piece of ``seq``'s prefill: within budget, up to its next stop point, blocks allocated."""
        start = seq.num_computed
        end = min(seq.prefill_target, start + budget, self._next_stop(seq, start))
        while True:
            affordable = (len(seq.table) + self.allocator.num_free) * self.block_size
            if affordable > start:
                end = min(end, affordable)
                seq.table.ensure(self.allocator, end)
                return Chunk(seq, start, end)
            newer = [s for s in self.running if s.admit_order > seq.admit_order]
            if not newer:
                return None
            victim = newer[-1]
            if victim in plan.decode:
                plan.decode.remove(victim)
            plan.prefill = [c for c in plan.prefill if c.seq is not victim]
            self._preempt(victim, plan)

    def _next_stop(self, seq: Sequence, pos: int) -> int:
        return self.prefix_cache.next_stop(seq, pos)

    def _can_admit(self, seq: Sequence) -> bool:
        if self.slots.num_free == 0 or len(self.running) >= self.max_num_seqs:
            return False
        # Conservative: blocks a prefix hit would share are not subtracted (evictable ones count as free).
        need = blocks_for(len(seq.tokens), self.block_size)
        return need + self.watermark_blocks <= self.allocator.num_free

    def _admit(self, seq: Sequence) -> None:
        seq.slot = self.slots.allocate()
        seq.status = Status.RUNNING
        seq.admit_order = next(self._order)
        seq.prefill_target = len(seq.tokens)
        seq.num_computed = 0
        self.running.append(seq)
        hit = self.prefix_cache.attach(seq, reuse=not (seq.index == 0 and seq.request.scores_prompt))
        if seq.num_preemptions == 0 and seq.index == 0:
            seq.request.cached_tokens = hit

    # ------------------------------------------------------------------ after the forward

    def after_prefill(self, chunk: Chunk) -> None:
        """Advance the sequence; let the prefix cache publish its full blocks / snapshot."""
        chunk.seq.num_computed = chunk.end
        self.prefix_cache.publish(chunk.seq, chunk.end)

    def after_decode(self, seq: Sequence) -> None:
        seq.num_computed += 1

    # ------------------------------------------------------------------ introspection

    @property
    def prefix(self) -> PrefixStats:
        return self.prefix_cache.stats

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)
