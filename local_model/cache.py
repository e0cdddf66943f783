"""Explicit inference caches for the hybrid model, sized for a serving engine.

A Jamba-style model has two kinds of sequence memory:

* attention layers keep K/V for every past token (grows with the sequence);
* Mamba layers keep a fixed-size recurrent state per sequence: the last ``d_conv - 1`` inputs of the causal
  depthwise conv and the ``d_inner x d_state`` SSM state. Its size never depends on the sequence length.

So only attention layers get a `KVCache` and only Mamba layers get a `MambaState`.

Interface (what `JambaForCausalLM.forward(input_ids, cache, seq_lens)` reads and writes)
-------------------------------------------------------------------------------------
``HybridCache(layers, lengths, slots=None)``

* ``layers[e]``: one *cache entry* per mixer: `KVCache` for ``e in config.attention_layer_ids``, `MambaState`
  for ``e in config.mamba_layer_ids`` (``config.num_cache_entries`` in all). For Jamba entry ``i`` is layer
  ``i``; the Mamba-2 families number their mixers consecutively, since a layer may hold both kinds (Falcon-H1,
  Zamba2) or neither (see `local_model.families.common`).
* ``lengths``: ``LongTensor[B]``, tokens already absorbed by batch row ``b`` (= position of its next token).
  A row with ``lengths[b] == 0`` is a fresh sequence: the forward zeroes its Mamba state before use, so a
  slot can be reused without an explicit reset.
* ``slots``: ``LongTensor[B]`` or ``None``. Every per-layer tensor has a leading *slot* dimension ``S``; batch
  row ``b`` reads and writes slot ``slots[b]`` (``None`` means ``slots = arange(B)``). An engine keeps one
  big pool (`HybridCache.allocate(config, num_slots=S, ...)`) and, per step, builds a cheap view with
  `HybridCache.view(slots, lengths)` for the sequences it batches. Slots in one batch must be distinct.

``MambaState(conv, ssm)``: ``conv`` is ``[S, *config.mamba_conv_state_shape]`` (model dtype), ``ssm`` is
``[S, *config.mamba_ssm_state_shape]`` (float32 by default: the recurrence accumulates over the whole
sequence). Mamba-1 (Jamba): ``[d_inner, d_conv - 1]`` and ``[d_inner, d_state]``; Mamba-2:
``[d_inner + 2 * n_groups * d_state, d_conv - 1]`` and ``[num_heads, head_dim, d_state]``.

``KVCache(k, v)``: ``k`` and ``v`` are ``[S, num_key_value_heads, capacity, head_dim]``; positions
``0 .. lengths[b]-1`` of slot ``slots[b]`` are valid. The attention layer touches it only through
``kv.attend(q, k, v, lengths, seq_lens, slots, scale)`` (-> `local_model.model.attention_with_kv_cache`),
so a paged (block-table) cache is a `KVCache` subclass that overrides `attend` with its own tensors.

The forward takes ``input_ids[B, T]`` right-padded with ``seq_lens[B]`` new tokens per row (``None``: all
``T``). After it returns, slot ``slots[b]`` of every layer holds the state after ``lengths[b] + seq_lens[b]``
tokens and ``cache.lengths`` has been replaced by ``lengths + seq_lens`` (a new tensor; the caller's
tensor is not mutated). Padded positions never touch any state; a row with ``seq_lens[b] == 0`` is idle
(its state and KV are left as they are, its logits are meaningless).

Kernels read and write the state tensors in place by slot index (``state_indices``), the convention of
vLLM's ``causal_conv1d_update(conv_state_indices=...)`` / ``selective_state_update(state_batch_indices=...)``,
so a Triton/CUDA kernel can update a pool without a gather/scatter round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from .config import JambaConfig


@dataclass
class MambaState:
    """Fixed-size recurrent state of one Mamba layer for ``S`` slots."""

    conv: torch.Tensor  # [S, d_inner, d_conv - 1]
    ssm: torch.Tensor  # [S, d_inner, d_state]

    @classmethod
    def zeros(
        cls,
        config: JambaConfig,
        num_slots: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        ssm_dtype: torch.dtype = torch.float32,
    ) -> MambaState:
        return cls(
            conv=torch.zeros(num_slots, *config.mamba_conv_state_shape, device=device, dtype=dtype),
            ssm=torch.zeros(num_slots, *config.mamba_ssm_state_shape, device=device, dtype=ssm_dtype),
        )

    def zero_(self, slots: torch.Tensor) -> None:
        self.conv[slots] = 0
        self.ssm[slots] = 0

    @property
    def nbytes(self) -> int:
        return self.conv.nbytes + self.ssm.nbytes


@dataclass
class KVCache:
    """Contiguous per-slot keys/values of one attention layer (capacity tokens per slot)."""

    k: torch.Tensor  # [S, num_kv_heads, capacity, head_dim]
    v: torch.Tensor  # [S, num_kv_heads, capacity, head_dim]

    @classmethod
    def zeros(
        cls,
        config: JambaConfig,
        num_slots: int,
        capacity: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        shape = (num_slots, config.num_key_value_heads, capacity, config.attn_head_dim)
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype), v=torch.zeros(shape, device=device, dtype=dtype)
        )

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        lengths: torch.Tensor,
        seq_lens: torch.Tensor,
        slots: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        """Store the new K/V and attend over the cached + new positions (what `Attention` calls).

        A paged cache subclasses `KVCache` and overrides this; the contiguous version is
        `local_model.model.attention_with_kv_cache` (looked up at call time).
        """
        from . import model

        return model.attention_with_kv_cache(q, k, v, self, lengths, seq_lens, slots, scale)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass
class HybridCache:
    """Per-layer caches plus the per-row bookkeeping the forward needs (see module docstring)."""

    layers: list[MambaState | KVCache]
    lengths: torch.Tensor  # LongTensor[B]
    slots: torch.Tensor | None = None  # LongTensor[B]; None = arange(B)
    # True when the caller zeroed the fresh rows' Mamba state before the forward (the engine's model
    # runner knows them on the host), so the forward skips `zero_fresh_states` and its host sync.
    states_prepared: bool = False

    @classmethod
    def allocate(
        cls,
        config: JambaConfig,
        batch_size: int,
        capacity: int,
        *,
        num_slots: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        ssm_dtype: torch.dtype = torch.float32,
    ) -> HybridCache:
        """Zeroed cache for ``num_slots`` (default ``batch_size``) sequences of up to ``capacity`` tokens.

        ``lengths`` starts at zero for ``batch_size`` rows; with ``num_slots > batch_size`` the rows use
        slots ``0..batch_size-1`` until `view` picks others.
        """
        num_slots = batch_size if num_slots is None else num_slots
        layers: list[MambaState | KVCache] = []
        attention = set(config.attention_layer_ids)
        for i in range(config.num_cache_entries):
            if i in attention:
                layers.append(KVCache.zeros(config, num_slots, capacity, device=device, dtype=dtype))
            else:
                layers.append(
                    MambaState.zeros(config, num_slots, device=device, dtype=dtype, ssm_dtype=ssm_dtype)
                )
        lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        return cls(layers=layers, lengths=lengths, slots=None)

    def view(self, slots: torch.Tensor | list[int], lengths: torch.Tensor | list[int]) -> HybridCache:
        """The same tensors, batched over ``slots`` with the given per-row ``lengths`` (no copy)."""
        device = self.lengths.device
        return replace(
            self,
            slots=torch.as_tensor(slots, dtype=torch.long, device=device),
            lengths=torch.as_tensor(lengths, dtype=torch.long, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def rows(self) -> torch.Tensor:
        """Slot index of each batch row."""
        if self.slots is not None:
            return self.slots
        return torch.arange(self.batch_size, device=self.lengths.device)

    def zero_fresh_states(self) -> None:
        """Zero the Mamba state of rows with ``lengths == 0`` (a reused slot must not leak old state)."""
        if self.states_prepared:
            return
        fresh = self.lengths == 0
        if not bool(fresh.any()):
            return
        slots = self.rows()[fresh]
        for layer in self.layers:
            if isinstance(layer, MambaState):
                layer.zero_(slots)

    def mamba_states(self) -> list[MambaState]:
        return [layer for layer in self.layers if isinstance(layer, MambaState)]

    def kv_caches(self) -> list[KVCache]:
        return [layer for layer in self.layers if isinstance(layer, KVCache)]

    @property
    def mamba_nbytes(self) -> int:
        return sum(s.nbytes for s in self.mamba_states())

    @property
    def kv_nbytes(self) -> int:
        return sum(c.nbytes for c in self.kv_caches())

    @property
    def nbytes(self) -> int:
        return self.mamba_nbytes + self.kv_nbytes


class AllocatesCache:
    """`allocate_cache` for a causal LM that has a ``config`` and an ``lm_head`` (Jamba and the Mamba-2
    families): a zeroed `HybridCache` on the model's device and dtype."""

    config: Any
    lm_head: Any

    def allocate_cache(
        self,
        batch_size: int,
        capacity: int,
        *,
        num_slots: int | None = None,
        ssm_dtype: torch.dtype = torch.float32,
    ) -> HybridCache:
        """A zeroed cache on this model's device/dtype (see `HybridCache.allocate`)."""
        w = self.lm_head.weight
        return HybridCache.allocate(
            self.config,
            batch_size,
            capacity,
            num_slots=num_slots,
            device=w.device,
            dtype=w.dtype,
            ssm_dtype=ssm_dtype,
        )


def mamba_state_bytes_per_sequence(
    config: JambaConfig, dtype: torch.dtype = torch.float32, ssm_dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of recurrent state one sequence needs across all Mamba layers (independent of its length)."""
    per_layer = (
        math.prod(config.mamba_conv_state_shape) * dtype.itemsize
        + math.prod(config.mamba_ssm_state_shape) * ssm_dtype.itemsize
    )
    return per_layer * len(config.mamba_layer_ids)


def kv_bytes_per_token(config: JambaConfig, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of K+V one token needs across all attention layers."""
    per_layer = 2 * config.num_key_value_heads * config.attn_head_dim * dtype.itemsize
    return per_layer * len(config.attention_layer_ids)
