"""Engine settings and how a memory budget is split between the two caches.

A hybrid has two kinds of sequence memory with different shapes (see `local_model.cache`):

* Mamba state: a fixed number of bytes per *sequence* (`mamba_state_bytes_per_sequence`), however long
  it is. The engine preallocates ``max_num_seqs`` slots (one per running sequence) plus
  ``snapshot_slots`` more for prefix-cache snapshots.
* Attention K/V: bytes per *token* in attention layers only (`kv_bytes_per_token`). Whatever is left of
  the budget becomes KV blocks of ``block_size`` tokens, shared by all sequences on demand.

`plan_memory` does the arithmetic and refuses a budget that cannot hold one maximum-length sequence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..cache import kv_bytes_per_token, mamba_state_bytes_per_sequence
from ..config import JambaConfig


@dataclass
class EngineConfig:
    memory_budget_mb: float = 256.0  # Mamba slots + snapshots + KV blocks
    block_size: int = 16  # tokens per KV block (and prefix-cache granularity)
    max_num_seqs: int = 64  # running sequences = SSM slots
    max_queue: int = 256  # requests waiting for admission before submit() raises EngineOverloaded
    prefill_chunk_tokens: int = 256  # prompt tokens per step across all prefills (bounds decode stalls)
    snapshot_interval: int = 256  # tokens between Mamba snapshots of a prefill (multiple of block_size)
    prefix_caching: bool = True
    snapshot_slots: int | None = None  # Mamba snapshots kept for the prefix cache; None: max_num_seqs
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    # torch intra-op threads (process-wide). None: one core less than the machine has, at most 8, so the
    # event loop (HTTP, SSE, tokenization) keeps a core: on 2 cores that is 1, and two spinning OpenMP
    # threads next to a busy event loop were measured 5-10x slower per decode step. 0: leave torch alone.
    num_threads: int | None = None
    retry_after_s: float = 1.0  # suggested client back-off when the queue is full
    # Decode steps per batch-size bucket over static buffers (CUDA graphs on CUDA; `BucketedDecode`):
    # Jamba through `local_model.decode.DecodeStep`, the Mamba-2 families (Bamba, Granite 4.0-H,
    # Nemotron-H, Falcon-H1, Zamba2) through `FamilyDecodeStep`. None: on CUDA (Jamba with the Triton
    # bundle; `bench/engine_gpu_check.py [--family F]` compares graph replay with eager steps and the CPU
    # engine). True: on for every supported model, on any device (eager off CUDA, which is how the CPU tests
    # compare it with the plain forward); False: off.
    decode_step: bool | None = None
    # Replay those steps from one CUDA graph per bucket, every bucket captured at engine start (CUDA only;
    # ignored elsewhere). `bench/engine_gpu_check.py` compares replayed steps with eager ones on the same
    # state on the GPU (equal to the bit) and the engine's tokens with the CPU reference's.
    cuda_graphs: bool = True
    ssm_dtype: torch.dtype = torch.float32  # recurrent state accumulates over the whole sequence: keep fp32

    def torch_threads(self) -> int | None:
        if self.num_threads is None:
            return max(1, min(8, (os.cpu_count() or 2) - 1))
        return self.num_threads or None

    def validate(self) -> None:
        if self.block_size < 1 or self.max_num_seqs < 1 or self.max_queue < 1:
            raise ValueError("block_size, max_num_seqs and max_queue must be >= 1")
        if self.prefill_chunk_tokens < self.block_size:
            raise ValueError("prefill_chunk_tokens must be >= block_size")
        if self.snapshot_interval < self.block_size or self.snapshot_interval % self.block_size:
            raise ValueError("snapshot_interval must be a positive multiple of block_size")


@dataclass(frozen=True)
class MemoryPlan:
    num_slots: int
    num_snapshots: int
    num_blocks: int
    block_size: int
    ssm_bytes_per_seq: int
    kv_bytes_per_block: int
    max_model_len: int

    @property
    def total_bytes(self) -> int:
        return (
            self.num_slots + self.num_snapshots
        ) * self.ssm_bytes_per_seq + self.num_blocks * self.kv_bytes_per_block


def plan_memory(model_config: JambaConfig, cfg: EngineConfig, dtype: torch.dtype) -> MemoryPlan:
    cfg.validate()
    ssm = mamba_state_bytes_per_sequence(model_config, dtype=dtype, ssm_dtype=cfg.ssm_dtype)
    kv_block = kv_bytes_per_token(model_config, dtype=dtype) * cfg.block_size
    snapshots = cfg.max_num_seqs if cfg.snapshot_slots is None else cfg.snapshot_slots
    if not cfg.prefix_caching:
        snapshots = 0
    max_len = cfg.max_model_len or model_config.max_position_embeddings
    budget = int(cfg.memory_budget_mb * 2**20)
    left = budget - (cfg.max_num_seqs + snapshots) * ssm
    # No attention layer at all: KV blocks cost nothing; keep the bookkeeping uniform.
    num_blocks = cfg.max_num_seqs * -(-max_len // cfg.block_size) if kv_block == 0 else left // kv_block
    min_blocks = -(-max_len // cfg.block_size) + 1
    if left < 0 or num_blocks < min_blocks:
        need_mb = ((cfg.max_num_seqs + snapshots) * ssm + min_blocks * kv_block) / 2**20
        raise ValueError(
            f"memory_budget_mb={cfg.memory_budget_mb} cannot hold {cfg.max_num_seqs} Mamba slots, {snapshots} "
            f"snapshots and one {max_len}-token sequence of KV; need >= {need_mb:.1f} MB "
            "(or lower max_num_seqs / snapshot_slots / max_model_len)"
        )
    return MemoryPlan(cfg.max_num_seqs, snapshots, int(num_blocks), cfg.block_size, ssm, kv_block, max_len)
