"""Attention KV memory in fixed-size blocks: a ref-counted allocator with a content-addressed cache.

Only attention layers keep per-token memory, so only they get blocks. A block holds ``block_size``
consecutive token positions of one sequence for *every* attention layer at once (the pools in
`local_model.cache.PagedKVCache` are indexed by the same block id in each layer), so one block table per
sequence serves all attention layers.

Blocks are reference counted so that several sequences can share the full blocks of a common prefix.
A full prompt block can be *registered* under the hash of its token ids chained with its parent's hash
(`block_hashes`); when its last user releases it, a registered block is not returned to the free list
but parked in an LRU of evictable cached blocks. `allocate` takes a free block first and only then
evicts the least recently used cached one, so cached prefixes live as long as memory allows. Registered
blocks are never written again: writers only append to their own, newest block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


class OutOfBlocks(Exception):
    """No free or evictable block is left (the scheduler preempts or waits)."""


def block_hashes(tokens: Sequence[int], block_size: int, limit: int | None = None) -> list[int]:
    """Chained hashes of the full blocks of ``tokens`` (at most ``limit`` blocks).

    Block i's hash covers tokens ``0 .. (i+1)*block_size - 1``: ``h_i = hash((h_{i-1}, tokens of block i))``.
    Python's tuple-of-int hash is deterministic within a process (no string hashing involved), and a hit
    is double-checked against the stored tokens, so a collision can never serve a wrong prefix.
    """
    n = len(tokens) // block_size
    if limit is not None:
        n = min(n, limit)
    out: list[int] = []
    parent = 0
    for i in range(n):
        parent = hash((parent, tuple(tokens[i * block_size : (i + 1) * block_size])))
        out.append(parent)
    return out


@dataclass(slots=True)
class _CachedBlock:
    block: int
    parent: int  # hash of the previous block (0 for the first)
    tokens: tuple[int, ...]


class BlockAllocator:
    """Free list + reference counts + hash -> block map for ``num_blocks`` KV blocks."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError("need at least one KV block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self._ref = [0] * num_blocks
        self._hash_of: dict[int, int] = {}  # block -> hash, for registered blocks
        self._cached: dict[int, _CachedBlock] = {}  # hash -> registered block
        self._evictable: OrderedDict[int, None] = OrderedDict()  # registered blocks with ref 0, LRU first

    # ------------------------------------------------------------------ accounting

    @property
    def num_free(self) -> int:
        """Blocks available to `allocate` right now (free + evictable cached)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.num_blocks - self.num_free

    def refcount(self, block: int) -> int:
        return self._ref[block]

    # ------------------------------------------------------------------ allocate / free

    def allocate(self) -> int:
        if self._free:
            block = self._free.pop()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            h = self._hash_of.pop(block)
            del self._cached[h]
        else:
            raise OutOfBlocks("no free KV block")
        self._ref[block] = 1
        return block

    def allocate_many(self, n: int) -> list[int]:
        if n > self.num_free:
            raise OutOfBlocks(f"need {n} KV blocks, {self.num_free} available")
        return [self.allocate() for _ in range(n)]

    def incref(self, block: int) -> None:
        if self._ref[block] == 0:
            self._evictable.pop(block, None)
        self._ref[block] += 1

    def release(self, block: int) -> None:
        """Drop one reference; at zero a registered block becomes evictable, any other becomes free."""
        ref = self._ref[block] - 1
        if ref < 0:
            raise RuntimeError(f"KV block {block} released more often than referenced")
        self._ref[block] = ref
        if ref == 0:
            if block in self._hash_of:
                self._evictable[block] = None
            else:
                self._free.append(block)

    def release_all(self, blocks: Sequence[int]) -> None:
        # Reverse order: the tail of a sequence is the least likely to be shared, so it is evicted first.
        for block in reversed(blocks):
            self.release(block)

    # ------------------------------------------------------------------ prefix cache

    def register(self, block: int, h: int, parent: int, tokens: Sequence[int]) -> bool:
        """Publish a full, immutable block under hash ``h``; False if that content is already cached."""
        if h in self._cached or block in self._hash_of:
            return False
        self._cached[h] = _CachedBlock(block, parent, tuple(tokens))
        self._hash_of[block] = h
        return True

    def lookup(self, h: int, parent: int, tokens: Sequence[int]) -> int | None:
        """The cached block with exactly this content and parent, else None (does not take a reference)."""
        entry = self._cached.get(h)
        if entry is None or entry.parent != parent or entry.tokens != tuple(tokens):
            return None
        return entry.block

    def touch(self, block: int) -> None:
        """Mark an evictable block as recently used."""
        if block in self._evictable:
            self._evictable.move_to_end(block)

    def is_cached(self, block: int) -> bool:
        return block in self._hash_of


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockTable:
    """One sequence's block ids, in position order: position p lives in block ``blocks[p // block_size]``."""

    __slots__ = ("blocks",)

    def __init__(self) -> None:
        self.blocks: list[int] = []

    def __len__(self) -> int:
        return len(self.blocks)

    def missing(self, num_tokens: int, block_size: int) -> int:
        """How many more blocks are needed to hold ``num_tokens`` positions."""
        return max(0, blocks_for(num_tokens, block_size) - len(self.blocks))

    def ensure(self, allocator: BlockAllocator, num_tokens: int) -> None:
        """Grow to hold ``num_tokens`` positions (raises OutOfBlocks, leaving the table unchanged)."""
        n = self.missing(num_tokens, allocator.block_size)
        if n:
            self.blocks.extend(allocator.allocate_many(n))

    def append_shared(self, allocator: BlockAllocator, block: int) -> None:
        """Reuse a cached block (prefix hit): take a reference instead of allocating."""
        allocator.incref(block)
        self.blocks.append(block)

    def free(self, allocator: BlockAllocator) -> None:
        allocator.release_all(self.blocks)
        self.blocks = []
