"""Per-sequence Mamba state: a pool of slots, and snapshots of slots for the prefix cache.

A Mamba layer's memory of a sequence is fixed-size (conv window + SSM state, see `local_model.cache`), so
the engine gives every running sequence one *slot* in a preallocated pool and never grows it: a slot for
a 10-token and a 10,000-token sequence cost the same. The pool tensors are `MambaState`s indexed by slot,
which the model reads and writes in place (``state_indices`` convention), so no per-step gather/scatter.

A recurrent state cannot be rebuilt from a prefix of the KV cache the way attention's can, so prefix
caching for a hybrid needs the Mamba state *at the end of* the cached prefix. `SnapshotStore` keeps copies
of a slot (every Mamba layer's conv + ssm) keyed by the chained block hash of the prefix it summarises,
in an LRU of fixed capacity. A prefix hit copies the snapshot into the new sequence's slot.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..cache import MambaState
from ..config import JambaConfig


def _zeros(
    config: JambaConfig, n: int, device: torch.device | str, dtype: torch.dtype, ssm_dtype: torch.dtype
) -> list[MambaState]:
    return [
        MambaState.zeros(config, n, device=device, dtype=dtype, ssm_dtype=ssm_dtype)
        for _ in config.mamba_layer_ids
    ]


class SSMSlotPool:
    """``num_slots`` slots of Mamba state for every Mamba layer; ``states[j]`` is Mamba layer j's pool."""

    def __init__(
        self,
        config: JambaConfig,
        num_slots: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        ssm_dtype: torch.dtype = torch.float32,
        scratch: int = 0,
    ) -> None:
        """``scratch`` extra slots (indices ``num_slots ..``) are never handed out: padding rows of a
        CUDA-graph decode bucket write there."""
        if num_slots < 1:
            raise ValueError("need at least one SSM slot")
        self.num_slots = num_slots
        self.states = _zeros(config, num_slots + scratch, device, dtype, ssm_dtype)
        self._free: list[int] = list(range(num_slots - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """A slot with stale contents: the model zeroes it when the sequence's length is 0, and a prefix
        hit overwrites it with a snapshot."""
        if not self._free:
            raise RuntimeError("no free SSM slot")
        return self._free.pop()

    def free(self, slot: int) -> None:
        self._free.append(slot)

    @property
    def nbytes_per_slot(self) -> int:
        return sum(s.nbytes for s in self.states) // self.num_slots


class SnapshotStore:
    """LRU of Mamba-state snapshots keyed by prefix hash (capacity 0 disables it)."""

    def __init__(
        self,
        config: JambaConfig,
        capacity: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        ssm_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.capacity = capacity
        self.states = _zeros(config, capacity, device, dtype, ssm_dtype) if capacity else []
        self._index: OrderedDict[int, int] = OrderedDict()  # hash -> row, least recently used first
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    def __contains__(self, h: int) -> bool:
        return h in self._index

    def __len__(self) -> int:
        return len(self._index)

    def save(self, h: int, pool: SSMSlotPool, slot: int) -> None:
        """Copy ``slot`` of the pool into the snapshot for ``h`` (evicting the LRU one if full)."""
        if not self.capacity:
            return
        row = self._index.get(h)
        if row is not None:  # same content already saved: the state is a function of the tokens
            self._index.move_to_end(h)
            return
        if self._free:
            row = self._free.pop()
        else:
            _, row = self._index.popitem(last=False)
        for snap, live in zip(self.states, pool.states, strict=True):
            snap.conv[row].copy_(live.conv[slot])
            snap.ssm[row].copy_(live.ssm[slot])
        self._index[h] = row

    def restore(self, h: int, pool: SSMSlotPool, slot: int) -> bool:
        """Copy the snapshot for ``h`` into ``slot``; False if there is none."""
        row = self._index.get(h)
        if row is None:
            return False
        self._index.move_to_end(h)
        for snap, live in zip(self.states, pool.states, strict=True):
            live.conv[slot].copy_(snap.conv[row])
            live.ssm[slot].copy_(snap.ssm[row])
        return True
