"""The model runner: one step's inputs as flat metadata, the forward, sampling.

The scheduler decides which sequences run and how many new tokens each brings; the runner turns that into
`StepMetadata` once per forward, on the host, from Python lists (the sequences' block tables, slots and
lengths), and moves it to the device in a handful of copies:

    input_ids          [N]       the step's new tokens, packed sequence after sequence
    query_start_loc    [B + 1]   row b's tokens are input_ids[query_start_loc[b] : query_start_loc[b + 1]]
    seq_lens           [B]       new tokens per row
    context_lens       [B]       tokens already cached per row (the position of its first new token)
    block_table        [B, M]    the attention layers' KV blocks of each row (paged KV, shared by all
                                 attention layers; Mamba layers keep no per-token memory)
    state_indices      [B]       each row's SSM slot in the Mamba layers' state pools
    has_initial_state  [B]       False for a row starting from an empty state (its slot is zeroed first)
    prompt_logprobs    (host)    the rows that want the logprob of the next prompt token at each of their
                                 positions (`PromptLogprobsRow`); empty for most steps

Everything the forward needs is in these tensors, so the forward reads nothing back to the host: no
``.item()``, ``.tolist()``, ``bool(tensor)`` or data-dependent shape in a decode step (the attention
index tensors are derived once per step in `PagedStep`, the fresh rows' Mamba state is zeroed before
the forward, and a step whose rows all bring the same number of tokens passes ``seq_lens=None``). The
reference model takes a right-padded ``[B, T]`` batch: `StepMetadata.padded_ids` scatters the packed
tokens into it with an index built on the host. On CUDA a decode step of a Jamba model runs through
`local_model.decode.DecodeStep` replayed from a CUDA graph per batch-size bucket (`BucketedDecode`; eager
on the CPU when `EngineConfig.decode_step` asks for it, which is how the tests exercise it); a Mamba-2
family model's runs its own forward through `local_model.engine.family_decode.FamilyDecodeStep` the same
way, when `EngineConfig.decode_step` is True (not yet by default).

Prompt logprobs: a prefill step whose metadata names `PromptLogprobsRow`s runs the model with logits at
every position instead of each row's last (`ModelRunner.execute_prefill`) and reads each named row's
logprobs from them (`sampler.position_logprobs`); a step naming none does exactly the work it did
before. The engine puts such rows in prefill groups of their own, so no other row pays for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..cache import HybridCache, MambaState
from .paged import PagedKVCache, PagedStep, hybrid_layers
from .sampler import SampleRow, TokenLogprob, position_logprobs, sample


@dataclass(frozen=True, slots=True)
class PromptLogprobsRow:
    """A row of a prefill step that wants prompt logprobs: its position t (t < len(targets)) predicts the
    prompt token ``targets[t]``, whose logprob and ``top`` best alternatives are read there."""

    row: int
    targets: list[int]
    top: int


@dataclass(slots=True)
class StepMetadata:
    """Flat description of one forward (see the module docstring)."""

    input_ids: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    context_lens: torch.Tensor
    block_table: torch.Tensor
    state_indices: torch.Tensor
    has_initial_state: torch.Tensor
    paged: PagedStep  # index tensors the attention layers share (derived from the fields above)
    pad_index: torch.Tensor | None  # [N] flat index of each packed token in [B, width]; None when width == 1
    fresh_slots: torch.Tensor | None  # slots of rows without initial state (zeroed before the forward)
    batch: int
    width: int  # longest row (the padded batch's T)
    uniform: bool  # every row brings ``width`` tokens
    prompt_logprobs: tuple[PromptLogprobsRow, ...] = ()  # rows scoring their prompt (prefill only)

    @property
    def is_decode(self) -> bool:
        return self.width == 1

    @classmethod
    def build(
        cls,
        inputs: list[list[int]],
        block_tables: list[list[int]],
        context_lens: list[int],
        slots: list[int],
        block_size: int,
        device: torch.device | str,
        prompt_logprobs: tuple[PromptLogprobsRow, ...] = (),
    ) -> StepMetadata:
        """Host-side construction from the sequences' lists; one transfer per tensor."""
        seq_lens = [len(x) for x in inputs]
        batch, width = len(inputs), max(seq_lens)
        starts = [0]
        for n in seq_lens:
            starts.append(starts[-1] + n)
        flat = [t for x in inputs for t in x]
        uniform = all(n == width for n in seq_lens)
        pad_index = None
        if width > 1:
            pad_index = torch.tensor(
                [b * width + t for b, n in enumerate(seq_lens) for t in range(n)], dtype=torch.long
            ).to(device)
        paged = PagedStep.build(block_tables, context_lens, seq_lens, block_size, width, device)
        assert paged.block_table is not None
        fresh = [s for s, n in zip(slots, context_lens, strict=True) if n == 0]

        def t(x: list[int]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.long).to(device)

        return cls(
            input_ids=t(flat),
            query_start_loc=t(starts),
            seq_lens=t(seq_lens),
            context_lens=t(context_lens),
            block_table=paged.block_table,
            state_indices=t(slots),
            has_initial_state=torch.tensor([n > 0 for n in context_lens]).to(device),
            paged=paged,
            pad_index=pad_index,
            fresh_slots=t(fresh) if fresh else None,
            batch=batch,
            width=width,
            uniform=uniform,
            prompt_logprobs=prompt_logprobs,
        )

    def padded_ids(self) -> torch.Tensor:
        """The packed tokens as the right-padded ``[B, width]`` batch the model takes (no host sync)."""
        if self.pad_index is None:
            return self.input_ids.view(self.batch, 1)
        ids = self.input_ids.new_zeros(self.batch * self.width)
        ids[self.pad_index] = self.input_ids
        return ids.view(self.batch, self.width)


class ModelRunner:
    """Runs the model over the engine's long-lived memory: KV block pools per attention layer and SSM slot
    pools per Mamba layer (``cache entry index -> pool``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_pools: dict[int, tuple[torch.Tensor, torch.Tensor]],
        mamba: dict[int, MambaState],
        block_size: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.kv_pools = kv_pools
        self.mamba = mamba
        self.block_size = block_size
        self.device = device
        self.num_entries = model.config.num_cache_entries
        self.bucketed: BucketedDecode | None = None  # set by `enable_bucketed_decode`

    def prepare(
        self,
        inputs: list[list[int]],
        block_tables: list[list[int]],
        context_lens: list[int],
        slots: list[int],
        prompt_logprobs: tuple[PromptLogprobsRow, ...] = (),
    ) -> StepMetadata:
        return StepMetadata.build(
            inputs, block_tables, context_lens, slots, self.block_size, self.device, prompt_logprobs
        )

    def execute(self, meta: StepMetadata) -> torch.Tensor:
        """Logits ``[B, vocab]`` at each row's last new token; advances the rows' KV and SSM state."""
        self._zero_fresh_states(meta)
        if meta.is_decode and self.bucketed is not None and self.bucketed.supports(meta):
            return self.bucketed(meta)
        return self.forward(meta)

    def execute_prefill(self, meta: StepMetadata) -> tuple[torch.Tensor, dict[int, list[TokenLogprob]]]:
        """`execute` for a prefill step, plus the prompt logprobs of the rows ``meta.prompt_logprobs``
        names (row -> one `TokenLogprob` per target). Without such rows: `execute`'s logits and ``{}``."""
        if not meta.prompt_logprobs:
            return self.execute(meta), {}
        self._zero_fresh_states(meta)
        logits = self.forward(meta, last_only=False)  # [B, width, vocab]
        scored = {r.row: position_logprobs(logits[r.row], r.targets, r.top) for r in meta.prompt_logprobs}
        return _last_valid(logits, meta), scored

    def _zero_fresh_states(self, meta: StepMetadata) -> None:
        """Rows starting from an empty state get their SSM slot zeroed before the forward."""
        if meta.fresh_slots is not None:
            for state in self.mamba.values():
                state.zero_(meta.fresh_slots)

    def forward(self, meta: StepMetadata, last_only: bool = True) -> torch.Tensor:
        """The model's forward over the step, reading only `meta`'s tensors (no host sync of its own):
        logits ``[B, vocab]`` at each row's last new token, or ``[B, width, vocab]`` at every position
        (padding included) without ``last_only``."""
        layers = hybrid_layers(
            self.num_entries, self.kv_pools, self.mamba, lambda k, v: PagedKVCache(k, v, meta.paged)
        )
        cache = HybridCache(
            layers=layers,  # type: ignore[arg-type]
            lengths=meta.context_lens,
            slots=meta.state_indices,
            states_prepared=True,
        )
        seq_lens = None if meta.uniform else meta.seq_lens
        logits = self.model(meta.padded_ids(), cache, seq_lens, last_only=last_only)
        return logits[:, 0] if last_only else logits

    def sample(
        self, logits: torch.Tensor, rows: list[SampleRow]
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        return sample(logits, rows)

    def enable_bucketed_decode(
        self,
        kernels: object,
        max_blocks_per_seq: int,
        scratch_slot: int,
        scratch_block: int,
        cuda_graphs: bool = False,
    ) -> None:
        """Decode steps run per batch bucket (see `BucketedDecode`): a Jamba model's through
        `local_model.decode.DecodeStep` (flat calls of ``kernels``), a Mamba-2 family model's through
        `FamilyDecodeStep` (its own forward over static buffers)."""
        from ..families.common import HybridForCausalLM

        step: DecodeStepLike
        if isinstance(self.model, HybridForCausalLM):
            from .family_decode import FamilyDecodeStep

            step = FamilyDecodeStep(self.model, self.kv_pools, self.mamba, self.block_size, scratch_slot)
        else:
            from ..decode import DecodeStep, PagedPool

            layers = hybrid_layers(
                self.num_entries, self.kv_pools, self.mamba, lambda k, v: PagedPool(k, v, self.block_size)
            )
            cache = HybridCache(layers=layers, lengths=torch.zeros(1, dtype=torch.long))  # type: ignore[arg-type]
            step = DecodeStep(self.model, cache, kernels, scratch_slot=scratch_slot)  # type: ignore[arg-type]
        use_graphs = cuda_graphs and self.device.type == "cuda"
        self.bucketed = BucketedDecode(step, max_blocks_per_seq, scratch_block, use_graphs)


def _last_valid(logits: torch.Tensor, meta: StepMetadata) -> torch.Tensor:
    """``[B, width, vocab]`` -> ``[B, vocab]`` at each row's last new token (``seq_lens - 1``)."""
    rows = torch.arange(meta.batch, device=logits.device)
    return logits[rows, meta.seq_lens - 1]


class DecodeStepLike(Protocol):
    """What `BucketedDecode` runs: a decode step over static buffers, one token per row
    (`local_model.decode.DecodeStep`, `local_model.engine.family_decode.FamilyDecodeStep`)."""

    model: Any  # has ``lm_head`` (the logits' device and dtype)
    config: Any  # has ``vocab_size``
    scratch_slot: int
    buckets: tuple[int, ...]

    def bucket(self, batch: int) -> int: ...

    def forward(
        self,
        ids: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        block_table: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class BucketedDecode:
    """A decode step (any `DecodeStepLike`) over static per-bucket buffers, captured in one CUDA graph per
    batch bucket when ``use_graphs`` is set (run eagerly on the same buffers otherwise).

    The buffers (token ids, SSM slots, positions, block table, logits) are overwritten by each step of the
    bucket, so a step returns a copy of its logits; padding rows of a bucket point at a scratch SSM slot
    and a scratch KV block that no sequence owns, so running the whole bucket never touches a live
    sequence's state.
    """

    def __init__(
        self,
        step: DecodeStepLike,
        max_blocks_per_seq: int,
        scratch_block: int,
        use_graphs: bool = False,
    ) -> None:
        self.step = step
        self.max_blocks = max_blocks_per_seq
        self.scratch_block = scratch_block
        self.use_graphs = use_graphs
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.bufs: dict[int, dict[str, torch.Tensor]] = {}

    def supports(self, meta: StepMetadata) -> bool:
        return meta.batch <= self.step.buckets[-1] and meta.block_table.shape[1] <= self.max_blocks

    def _buffers(self, bucket: int) -> dict[str, torch.Tensor]:
        w = self.step.model.lm_head.weight
        dev = w.device
        return {
            "ids": torch.zeros(bucket, dtype=torch.long, device=dev),
            "slots": torch.full((bucket,), self.step.scratch_slot, dtype=torch.long, device=dev),
            "positions": torch.zeros(bucket, dtype=torch.long, device=dev),
            "block_table": torch.full(
                (bucket, self.max_blocks), self.scratch_block, dtype=torch.long, device=dev
            ),
            "logits": torch.zeros(bucket, self.step.config.vocab_size, dtype=w.dtype, device=dev),
        }

    def _body(self, bufs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.step.forward(
            bufs["ids"], bufs["slots"], bufs["positions"], bufs["block_table"], out=bufs["logits"]
        )

    def _capture(self, bucket: int, bufs: dict[str, torch.Tensor]) -> None:  # pragma: no cover - GPU only
        from ..decode import capture_graph

        # fresh buffers point every row at the scratch slot and block, so the warm-up touches no sequence
        self.graphs[bucket], _ = capture_graph(lambda: self._body(bufs))

    def capture_buckets(self, max_batch: int) -> None:  # pragma: no cover - GPU only
        """Capture the graph of every bucket up to ``max_batch``'s now, before any sequence is served (as
        the engine does at start), so that no capture happens between two steps of live sequences."""
        for bucket in self.step.buckets:
            if bucket > self.step.bucket(min(max_batch, self.step.buckets[-1])):
                break
            if bucket not in self.bufs:
                self.bufs[bucket] = self._buffers(bucket)
                self._capture(bucket, self.bufs[bucket])

    def __call__(self, meta: StepMetadata) -> torch.Tensor:
        """Logits ``[B, vocab]`` of the decode step, a copy: the bucket's output buffer is rewritten by the
        next call for the same bucket, which can come before these logits are sampled (an engine step runs
        its decodes, then its prefill chunks, and samples them all together; a one-token chunk is a decode
        step of its own)."""
        bucket = self.step.bucket(meta.batch)
        bufs = self.load(meta, bucket)
        self.run(bucket, bufs, meta.batch)
        return bufs["logits"][: meta.batch].clone()

    def load(self, meta: StepMetadata, bucket: int) -> dict[str, torch.Tensor]:
        """The bucket's buffers (made, and its graph captured, on first use) holding ``meta``'s rows; the
        padding rows point at the scratch slot and block."""
        if bucket not in self.bufs:
            self.bufs[bucket] = self._buffers(bucket)
            if self.use_graphs:
                self._capture(bucket, self.bufs[bucket])
        b, n = meta.batch, meta.block_table.shape[1]
        bufs = self.bufs[bucket]
        bufs["ids"][:b] = meta.input_ids
        bufs["slots"].fill_(self.step.scratch_slot)
        bufs["slots"][:b] = meta.state_indices
        bufs["positions"].zero_()
        bufs["positions"][:b] = meta.context_lens
        bufs["block_table"].fill_(self.scratch_block)
        bufs["block_table"][:b, :n] = meta.block_table
        return bufs

    def run(self, bucket: int, bufs: dict[str, torch.Tensor], batch: int) -> None:
        """The step over the loaded buffers (``batch`` live rows), logits into ``bufs["logits"]``: the graph
        replayed, or the same body eagerly."""
        if self.use_graphs:
            self.graphs[bucket].replay()  # pragma: no cover - GPU only
        else:
            self._body(bufs)
