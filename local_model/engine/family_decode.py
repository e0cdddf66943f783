"""A Mamba-2 family model's decode step over static buffers, the counterpart of `local_model.decode.DecodeStep`
for the models of `local_model.families` (Bamba, Granite 4.0-H, Nemotron-H, Falcon-H1, Zamba2).

Where `DecodeStep` re-implements Jamba's layers as flat kernel calls, `FamilyDecodeStep` runs the family
model's own forward for one token per row: the engine's SSM slot pools serve its Mamba-2 mixers (single-
token conv and state updates at each row's slot) and its attention layers read and write the engine's paged
KV pools through a `PagedStep` derived on the device from the block table and positions
(`PagedStep.for_decode`). Its MoE layers route inside `sync_free_experts`. Nothing reads a device value back
to the host and every shape is fixed by the batch bucket, so `BucketedDecode` can record the step in one
CUDA graph per bucket (or run it eagerly on the same buffers).
"""

from __future__ import annotations

import torch

from ..cache import HybridCache, MambaState
from ..decode import pick_bucket
from ..families.common import HybridForCausalLM, sync_free_experts
from .paged import PagedKVCache, PagedStep, decode_kernel_applies, hybrid_layers

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class FamilyDecodeStep:
    """One decode step of a `HybridForCausalLM` over the engine's pools, for up to ``buckets[-1]`` rows.

    ``kv_pools``: cache entry -> (K, V) flat block pools (``[num_blocks * block_size, Hkv, hd]``);
    ``mamba``: cache entry -> the slot pool's `MambaState`. Padding rows point at ``scratch_slot`` (and at a
    scratch KV block through their block table), which no sequence owns."""

    def __init__(
        self,
        model: HybridForCausalLM,
        kv_pools: dict[int, tuple[torch.Tensor, torch.Tensor]],
        mamba: dict[int, MambaState],
        block_size: int,
        scratch_slot: int,
        buckets: tuple[int, ...] = BUCKETS,
    ) -> None:
        self.model = model
        self.config = model.config
        self.kv_pools = kv_pools
        self.mamba = mamba
        self.block_size = block_size
        self.scratch_slot = scratch_slot
        # buckets up to the first that holds every slot (its padding rows all go to the scratch slot)
        cover = next((b for b in buckets if b >= scratch_slot), buckets[-1])
        self.buckets = tuple(b for b in buckets if b <= cover)
        first = next(iter(kv_pools.values()), None)
        # the Triton paged kernel reads the block table in place; elsewhere attention gathers each row's
        # context through an index over all of the table's positions (B x max_model_len elements per step:
        # fine for the CPU tests, costly on a GPU with blocks under 16 tokens and a long max_model_len)
        self.gather = first is not None and not decode_kernel_applies(first[0], block_size)

    def bucket(self, batch: int) -> int:
        return pick_bucket(self.buckets, batch)

    @torch.no_grad()
    def forward(
        self,
        ids: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        block_table: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, vocab] for token ids[b] at position positions[b] of the sequence in slot slots[b] whose
        KV blocks are ``block_table[b]``; written to ``out`` if given. Advances the rows' SSM state and
        writes their new K/V."""
        step = (
            PagedStep.for_decode(block_table, positions, self.block_size, gather=self.gather)
            if self.kv_pools
            else None
        )
        layers = hybrid_layers(
            self.config.num_cache_entries, self.kv_pools, self.mamba, lambda k, v: PagedKVCache(k, v, step)
        )
        cache = HybridCache(
            layers=layers,  # type: ignore[arg-type]
            lengths=positions,
            slots=slots,
            states_prepared=True,
        )
        with sync_free_experts():
            logits = self.model(ids[:, None], cache, None, last_only=True)[:, 0]
        if out is None:
            return logits
        out.copy_(logits)
        return out
