"""Paged attention KV: block pools per attention layer and the per-step index tensors that address them.

`local_model.cache.KVCache` keeps a contiguous ``[slot, head, capacity, hd]`` buffer per sequence, which
must be sized for the longest sequence up front. The engine instead stores K/V in fixed-size blocks:
each attention layer has a flat pool ``[num_blocks * block_size, Hkv, hd]`` where block ``b`` occupies
rows ``b*block_size .. (b+1)*block_size - 1``, and a sequence's *block table* lists its blocks in order.

The indexing work (which pool rows the new tokens go to, which pool rows each row reads, the causal mask)
is the same for every attention layer of a forward, so `PagedStep.build` computes it once per forward
and each layer only does two scatters, one gather and SDPA (`paged_attention`).

`PagedKVCache` plugs into the model through `local_model.cache.KVCache.attend`, the hook the attention
layer calls, so the model code is the same for contiguous and paged caches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F

from ..cache import KVCache, MambaState

_L = TypeVar("_L")


@dataclass(slots=True)
class PagedStep:
    """Index tensors for one forward over a right-padded batch ``[B, T]`` (shared by all attention layers).

    write_index: ``[N]`` pool row of each valid new token, in (row, t) order of ``new_rows/new_cols``.
    read_index: ``[B, total]`` pool row of every position ``0 .. total-1`` of each batch row (positions a row
        does not have point at row 0 and are masked out).
    mask: ``[B, 1, T, total]`` query t of row b sees position p iff ``p <= lengths[b] + t``; None when the
        step attends row by row instead (``row_spans``).
    row_spans: ``(lengths[b], seq_lens[b])`` per row, set for a prefill whose dense mask would be large (a
        long chunk or a long context: its size is B * T * total): each row then attends on its own through
        `local_model.model.attention_over_context`, with no mask at all.
    """

    write_index: torch.Tensor
    new_rows: torch.Tensor
    new_cols: torch.Tensor
    read_index: torch.Tensor
    mask: torch.Tensor | None
    all_new_valid: bool
    block_table: torch.Tensor | None = None  # [B, n_blocks] block ids of each row (for the decode kernel)
    context_lens: torch.Tensor | None = None  # [B] positions each row attends to after this step
    block_size: int = 0
    row_spans: list[tuple[int, int]] | None = None

    # Above this many mask elements (B * T * total) a prefill attends row by row without a mask.
    MASK_LIMIT = 1 << 22

    @classmethod
    def build(
        cls,
        block_tables: list[list[int]],
        lengths: list[int],
        seq_lens: list[int],
        block_size: int,
        width: int,
        device: torch.device | str = "cpu",
    ) -> PagedStep:
        """``lengths[b]`` tokens of row b are cached, ``seq_lens[b]`` new ones arrive (padded to ``width``).

        Only the block table, the lengths and the new tokens' (row, column) pairs are made on the host (their
        size is the step's rows, blocks and new tokens); the per-position index and mask, ``B x total``
        elements, are computed on the device, asynchronously, so a long context costs the host nothing."""
        total = max(n + s for n, s in zip(lengths, seq_lens, strict=True))
        n_blocks = -(-total // block_size)
        batch = len(lengths)
        table = torch.tensor([(bt + [0] * n_blocks)[:n_blocks] for bt in block_tables], dtype=torch.long)
        table = table.to(device)
        all_valid = all(s == width for s in seq_lens)
        if all_valid:
            new_rows = torch.arange(batch).repeat_interleave(width)
            new_cols = torch.arange(width).repeat(batch)
        else:
            new_rows = torch.tensor([b for b, n in enumerate(seq_lens) for _ in range(n)], dtype=torch.long)
            new_cols = torch.tensor([t for n in seq_lens for t in range(n)], dtype=torch.long)
        new_rows, new_cols = new_rows.to(device), new_cols.to(device)
        lengths_t = torch.tensor(lengths, dtype=torch.long).to(device)
        pos = torch.arange(total, device=device)
        read_index = table[:, pos // block_size] * block_size + pos % block_size  # [B, total]
        qpos = lengths_t[:, None] + torch.arange(
            width, device=device
        )  # [B, T] absolute position of new tokens
        row_wise = width > 1 and (batch == 1 or batch * width * total > cls.MASK_LIMIT)
        mask = None if row_wise else (pos[None, None, :] <= qpos[:, :, None])[:, None]  # [B, 1, T, total]
        return cls(
            write_index=read_index[new_rows, qpos[new_rows, new_cols]],
            new_rows=new_rows,
            new_cols=new_cols,
            read_index=read_index,
            mask=mask,
            all_new_valid=all_valid,
            block_table=table,
            context_lens=torch.tensor([n + s for n, s in zip(lengths, seq_lens, strict=True)]).to(device),
            block_size=block_size,
            row_spans=list(zip(lengths, seq_lens, strict=True)) if row_wise else None,
        )

    @classmethod
    def for_decode(
        cls, block_table: torch.Tensor, positions: torch.Tensor, block_size: int, gather: bool = True
    ) -> PagedStep:
        """A decode step (one new token per row, at ``positions[b]``) from device tensors alone: no host
        value, and shapes fixed by ``block_table`` ([B, max_blocks]), so it can be recorded in a CUDA graph.
        Every row attends over its table's ``max_blocks * block_size`` positions, masked beyond its own;
        ``gather=False`` leaves out that gather's index and mask (``B x max_blocks * block_size``) for the
        paged decode kernel, which reads the block table in place."""
        batch = block_table.shape[0]
        dev = block_table.device
        rows = torch.arange(batch, device=dev)
        write = block_table[rows, positions // block_size] * block_size + positions % block_size
        read_index, mask = write[:, None], None
        if gather:
            pos = torch.arange(block_table.shape[1] * block_size, device=dev)
            read_index = block_table[:, pos // block_size] * block_size + pos % block_size  # [B, total]
            mask = (pos[None, None, :] <= positions[:, None, None])[:, None]  # [B, 1, 1, total]
        return cls(
            write_index=write,
            new_rows=rows,
            new_cols=torch.zeros_like(rows),
            read_index=read_index,
            mask=mask,
            all_new_valid=True,
            block_table=block_table,
            context_lens=positions + 1,
            block_size=block_size,
        )


@dataclass
class PagedKVCache(KVCache):
    """One attention layer's K/V block pools (``k``, ``v``: ``[num_blocks * block_size, Hkv, hd]``) plus the
    index tensors of the current forward. Built per forward by the engine; the pools are long-lived."""

    step: PagedStep | None = None

    @property
    def capacity(self) -> int:  # total positions in the pool, across all sequences
        return self.k.shape[0]

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        lengths: torch.Tensor,
        seq_lens: torch.Tensor | None,
        slots: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        """The `KVCache.attend` hook the attention layer calls: positions come from `step`, not slots."""
        return paged_attention(q, k, v, self, scale)


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: PagedKVCache, scale: float
) -> torch.Tensor:
    """Write the new K/V into their blocks, then attend over each row's cached + new positions.

    q: [B, H, T, hd]; k, v: [B, Hkv, T, hd]. Same result as `local_model.model.attention_with_kv_cache`
    for the same tokens; padded query rows (t >= seq_lens[b]) are finite and meaningless.
    """
    s = kv.step
    assert s is not None, "PagedKVCache used without a PagedStep"
    k_new = k.transpose(1, 2)  # [B, T, Hkv, hd]
    v_new = v.transpose(1, 2)
    if s.all_new_valid:
        k_new, v_new = k_new.reshape(-1, *k_new.shape[2:]), v_new.reshape(-1, *v_new.shape[2:])
    else:
        k_new, v_new = k_new[s.new_rows, s.new_cols], v_new[s.new_rows, s.new_cols]
    kv.k[s.write_index] = k_new.to(kv.k.dtype)
    kv.v[s.write_index] = v_new.to(kv.v.dtype)
    if q.shape[2] == 1 and q.is_cuda and s.block_table is not None:
        decoded = _paged_decode_kernel(q, kv, s, scale)
        if decoded is not None:
            return decoded
    if s.row_spans is not None:
        return _attend_rows(q, kv, s, scale)
    assert s.mask is not None
    keys = kv.k[s.read_index].transpose(1, 2).to(q.dtype)  # [B, Hkv, total, hd]
    values = kv.v[s.read_index].transpose(1, 2).to(q.dtype)
    # GQA without copying K/V n_rep times: fold the n_rep query heads that share a KV head into the query
    # length (query head h uses KV head h // n_rep, so heads are grouped contiguously).
    batch, heads, width, hd = q.shape
    kv_heads = keys.shape[1]
    n_rep = heads // kv_heads
    qg = q.reshape(batch, kv_heads, n_rep * width, hd)
    mask = s.mask if width == 1 else s.mask.repeat(1, 1, n_rep, 1)  # rows ordered (rep, t)
    out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(batch, heads, width, hd)


def _attend_rows(q: torch.Tensor, kv: PagedKVCache, s: PagedStep, scale: float) -> torch.Tensor:
    """Each row over its own cached + new positions (lengths known on the host: no sync, no mask);
    padded query rows stay zero."""
    from ..model import attention_over_context

    assert s.row_spans is not None
    out = torch.zeros_like(q)
    for b, (cached, new) in enumerate(s.row_spans):
        rows = s.read_index[b, : cached + new]
        keys = kv.k[rows].transpose(0, 1)[None].to(q.dtype)  # [1, Hkv, cached + new, hd]
        values = kv.v[rows].transpose(0, 1)[None].to(q.dtype)
        out[b : b + 1, :, :new] = attention_over_context(q[b : b + 1, :, :new], keys, values, scale)
    return out


def _paged_decode_kernel(
    q: torch.Tensor, kv: PagedKVCache, s: PagedStep, scale: float
) -> torch.Tensor | None:
    """Decode (one new token per row) on CUDA: the Triton paged-attention kernel reads the blocks in place
    instead of gathering every row's context. None where it does not apply (no Triton, blocks < 16 tokens)."""
    block_size = s.block_size
    if not decode_kernel_applies(kv.k, block_size):
        return None
    from ..kernels.triton_ops import attention_decode

    kv_heads, hd = kv.k.shape[1], kv.k.shape[2]
    pool_k = kv.k.view(-1, block_size, kv_heads, hd).transpose(1, 2)  # [blocks, Hkv, block_size, hd], no copy
    pool_v = kv.v.view(-1, block_size, kv_heads, hd).transpose(1, 2)
    out = attention_decode(
        q=q[:, :, 0],
        k_cache=pool_k,
        v_cache=pool_v,
        context_lens=s.context_lens,
        scale=scale,
        block_table=s.block_table,
    )
    return out[:, :, None]


def decode_kernel_applies(pool: torch.Tensor, block_size: int) -> bool:
    """Whether a decode step over K/V ``pool`` runs the Triton paged-attention kernel (CUDA, Triton
    importable, blocks of >= 16 tokens) rather than gathering every row's context."""
    if not pool.is_cuda or block_size < 16 or pool.shape[0] % block_size:
        return False
    try:
        from ..kernels.triton_ops import attention_decode  # noqa: F401
    except ImportError:
        return False
    return True


def hybrid_layers(
    num_entries: int,
    kv_pools: dict[int, tuple[torch.Tensor, torch.Tensor]],
    mamba: dict[int, MambaState],
    wrap: Callable[[torch.Tensor, torch.Tensor], _L],
) -> list[MambaState | _L]:
    """The per-entry cache layers of a step: each attention entry's flat K/V pool wrapped by ``wrap`` (a
    paged view for this step's metadata, or the pool layout a decode step reads), each Mamba entry its slot
    pool's state."""
    return [wrap(*kv_pools[i]) if i in kv_pools else mamba[i] for i in range(num_entries)]
