"""Prefix caching for a hybrid model: KV blocks *and* the Mamba state at the end of the cached prefix.

For a pure transformer a cached prefix is just its KV blocks. A hybrid also needs the Mamba layers'
recurrent state after exactly that prefix, which cannot be rebuilt from KV. So a prefix is reusable only
where a snapshot of the sequence's SSM slot (conv + ssm state of every Mamba layer) was taken, and
snapshots can only be taken where a prefill chunk ends. Chunks therefore end on *stop points*:

* every ``snapshot_interval`` tokens (a shared system prompt is reusable up to the last multiple), and
* ``P``, the last block boundary strictly before the final prompt token (a repeated prompt is reusable up
  to there: one token must remain to compute, whose logits give the first sample).

Snapshots cost the same as a running sequence's slot (size independent of length), so they are taken
at those points only, not at every block, and kept in an LRU (`SnapshotStore`). KV blocks are
published, ref-counted and evicted by `BlockAllocator`; a block is keyed by the chained hash of all
tokens up to its end (`block_hashes`) and verified against its tokens on a hit.

Because stop points depend only on the tokens, a prompt is chunked identically with or without a hit,
so a hit changes no computation after the cached prefix: outputs with and without the cache are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kv_blocks import BlockAllocator, block_hashes
from .sequence import Sequence
from .ssm_slots import SnapshotStore, SSMSlotPool


@dataclass(slots=True)
class PrefixStats:
    queries: int = 0  # admissions that looked up the cache
    hits: int = 0  # admissions that reused a cached prefix
    query_tokens: int = 0  # prompt tokens looked up
    hit_tokens: int = 0  # prompt tokens whose prefill was skipped


class PrefixCache:
    def __init__(self, allocator: BlockAllocator, slots: SSMSlotPool, snapshots: SnapshotStore, *,
                 snapshot_interval: int, enabled: bool = True) -> None:
        self.allocator = allocator
        self.slots = slots
        self.snapshots = snapshots
        self.block_size = allocator.block_size
        self.snapshot_interval = snapshot_interval
        self.enabled = enabled
        self.stats = PrefixStats()

    # ------------------------------------------------------------------ where chunks may end

    def last_boundary(self, seq: Sequence) -> int:
        """P for the sequence's prefill target (see module docstring)."""
        return ((seq.prefill_target - 1) // self.block_size) * self.block_size

    def next_stop(self, seq: Sequence, pos: int) -> int:
        """First stop point after ``pos``. Applies with the cache disabled too, so chunking never differs."""
        nxt = (pos // self.snapshot_interval + 1) * self.snapshot_interval
        p = self.last_boundary(seq)
        return p if pos < p < nxt else nxt

    # ------------------------------------------------------------------ admission: reuse

    def attach(self, seq: Sequence, reuse: bool = True) -> int:
        """At admission (slot allocated, table empty): hash the prefill target, attach the longest cached
        prefix that has a snapshot at its end, and return its length in tokens (0 on a miss).

        ``reuse=False`` looks nothing up (the sequence prefills from its first token, as vLLM does for a
        request that wants prompt logprobs: a skipped prefill has no logits); its blocks are still
        published as it computes them."""
        bs = self.block_size
        seq.hashes = block_hashes(seq.tokens[: seq.prefill_target], bs, limit=self.last_boundary(seq) // bs)
        seq.num_registered = 0
        if not self.enabled or not reuse:
            return 0
        found: list[int] = []
        best = 0
        parent = 0
        for i, h in enumerate(seq.hashes):
            block = self.allocator.lookup(h, parent, seq.tokens[i * bs : (i + 1) * bs])
            if block is None:
                break
            found.append(block)
            if h in self.snapshots:
                best = i + 1
            parent = h
        self.stats.queries += 1
        self.stats.query_tokens += seq.prefill_target
        if best == 0:
            return 0
        assert seq.slot is not None
        self.snapshots.restore(seq.hashes[best - 1], self.slots, seq.slot)
        for block in found[:best]:
            seq.table.append_shared(self.allocator, block)
        seq.num_computed = best * bs
        seq.num_registered = best
        self.stats.hits += 1
        self.stats.hit_tokens += best * bs
        return best * bs

    # ------------------------------------------------------------------ after a prefill chunk: publish

    def publish(self, seq: Sequence, end: int) -> None:
        """The sequence has computed ``end`` tokens: publish its newly full prompt blocks and, if ``end`` is a
        block-aligned stop point within the cacheable prefix, a snapshot of its slot."""
        if not self.enabled:
            return
        bs = self.block_size
        full = min(end // bs, len(seq.hashes))
        for i in range(seq.num_registered, full):
            parent = seq.hashes[i - 1] if i else 0
            self.allocator.register(seq.table.blocks[i], seq.hashes[i], parent, seq.tokens[i * bs : (i + 1) * bs])
        seq.num_registered = max(seq.num_registered, full)
        p = self.last_boundary(seq)
        at_stop = end % self.snapshot_interval == 0 or end == p
        if at_stop and end % bs == 0 and 0 < end <= p:
            assert seq.slot is not None
            self.snapshots.save(seq.hashes[end // bs - 1], self.slots, seq.slot)
