"""Bucketed decode steps for the Mamba-2 families (`FamilyDecodeStep` in `BucketedDecode`, eager on the CPU;
one CUDA graph per bucket on the GPU): the engine's greedy outputs equal its plain forward's, a one-token
prefill chunk beside decode rows in one engine step keeps its own logits, the step reads nothing back to
the host (MoE routing included), and the families are bucketed by default on CUDA only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import local_model
from local_model.engine import Engine, EngineConfig, SamplingParams
from local_model.engine.engine import _bucketed_decode
from local_model.engine.family_decode import FamilyDecodeStep
from local_model.families.common import expert_linear, experts_ref, experts_sync_free
from tests.support.host_sync import HostSyncRecorder
from tests.support.mamba2 import ENGINE_CASES, VOCAB, save_case

# Bamba (Mamba-2 + attention), Granite 4.0-H (attention + MoE with a shared MLP, RoPE), Falcon-H1 (parallel
# attention and Mamba-2 in every layer, µP multipliers)
FAMILIES = ["bamba_gqa", "granite_moe_rope", "falcon_mup_gqa"]
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp(request.param)
    save_case(request.param, path, seed=FAMILIES.index(request.param))
    return local_model.load(path)


def make_engine(lm: Any, decode_step: bool | None, **cfg: Any) -> Engine:
    base = dict(memory_budget_mb=8, max_num_seqs=8, block_size=16, prefill_chunk_tokens=64, max_model_len=512)
    return Engine(lm.module, None, EngineConfig(**{**base, **cfg}, decode_step=decode_step))


def prompts(*lens: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lens]


def generate(engine: Engine, ps: list[list[int]], params: SamplingParams = GREEDY) -> list[list[int]]:
    streams = [engine.submit_sync(p, params) for p in ps]
    engine.run_until_idle()
    return [s.result().choices[0].token_ids for s in streams]


def count_bucket_runs_per_step(engine: Engine) -> list[int]:
    """How many bucketed decode steps each engine step runs (the list grows as the engine steps)."""
    bd = engine.runner.bucketed
    assert bd is not None
    counts: list[int] = []
    inner_run, inner_step = bd.run, engine.step

    def counted_run(bucket: int, bufs: dict[str, torch.Tensor], batch: int) -> None:
        counts[-1] += 1
        inner_run(bucket, bufs, batch)

    def counted_step() -> Any:
        counts.append(0)
        return inner_step()

    bd.run = counted_run  # type: ignore[method-assign]
    engine.step = counted_step  # type: ignore[method-assign]
    return counts


def test_bucketed_family_decode_generates_what_the_forward_generates(lm: Any) -> None:
    """Five concurrent prompts of different lengths: buckets of 1..8 rows (padding rows on the scratch slot
    and block, rows leaving the batch as they finish), greedy tokens equal to the model forward's."""
    ps = prompts(3, 9, 20, 33, 47)
    ragged = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (4, 12, 8, 10, 6)]
    outputs = []
    for decode_step in (False, True):
        engine = make_engine(lm, decode_step, prefill_chunk_tokens=128)  # all five decode together
        assert (engine.runner.bucketed is not None) == decode_step
        streams = [engine.submit_sync(p, s) for p, s in zip(ps, ragged, strict=True)]
        engine.run_until_idle()
        outputs.append([s.result().choices[0].token_ids for s in streams])
        if decode_step:
            bd = engine.runner.bucketed
            assert bd is not None and isinstance(bd.step, FamilyDecodeStep)
            assert {1, 2, 4, 8} <= set(bd.bufs), sorted(bd.bufs)
        assert engine.allocator.num_used == 0 and engine.slots.num_free == engine.slots.num_slots
    assert outputs[0] == outputs[1]
    assert len({tuple(o) for o in outputs[0]}) == len(ps), "the rows' tokens differ (a mix-up would show)"


def test_one_token_prefill_chunk_beside_decode_rows_keeps_its_own_logits(lm: Any) -> None:
    """A 17-token prompt prefills up to its block boundary (16), then its last token alone: that chunk is a
    decode step of its own, run through bucket 1 in the engine step where the 5-token prompt decodes; both
    rows' logits are sampled after both forwards. Greedy tokens equal the model forward's."""
    ps = prompts(5, 17)
    outputs = []
    for decode_step in (False, True):
        engine = make_engine(lm, decode_step)
        runs_per_step = count_bucket_runs_per_step(engine) if decode_step else []
        outputs.append(generate(engine, ps))
        if decode_step:
            assert max(runs_per_step) == 2, runs_per_step
    assert outputs[0] == outputs[1]
    assert outputs[0][0][1] != outputs[0][1][0], "the two rows' tokens differ (the test can see a mix-up)"


@pytest.mark.parametrize("case", ENGINE_CASES)
def test_family_decode_step_reads_nothing_back_to_the_host(case: str, tmp_path: Path) -> None:
    """The whole bucketed step, MoE routing included (no CPU-only exemption), records no host sync; every
    family."""
    save_case(case, tmp_path, seed=0)
    lm = local_model.load(tmp_path)
    engine = make_engine(lm, True)
    for p in prompts(5, 12, 26):
        engine.submit_sync(p, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    with torch.inference_mode():
        while len(engine.running_sequences()) < 3 or any(
            s.prefill_target > s.num_computed for s in engine.running_sequences()
        ):
            engine.step()
        seqs = engine.running_sequences()
        meta = engine.runner.prepare(
            [[s.tokens[-1]] for s in seqs],
            [s.table.blocks for s in seqs],
            [s.num_computed for s in seqs],
            [s.slot for s in seqs],
        )
        assert meta.is_decode and engine.runner.bucketed is not None and engine.runner.bucketed.supports(meta)
        with HostSyncRecorder() as rec:
            logits = engine.runner.execute(meta)
    assert logits.shape == (3, lm.module.config.vocab_size)
    assert rec.hits == [], [n for n, _ in rec.hits]


@pytest.mark.parametrize("tokens", [1, 2, 3, 7])
def test_sync_free_experts_equal_the_reference_loop(tokens: int) -> None:
    """Gathered per-(token, choice) weights (3 N k <= E) and every expert densely weighted (3 N k > E)."""
    gen = torch.Generator().manual_seed(tokens)
    e, k, h, i = 12, 2, 8, 5
    x = torch.randn(tokens, h, generator=gen)
    w_in = torch.randn(e, 2 * i, h, generator=gen)
    w_out = torch.randn(e, h, i, generator=gen)
    top_w, top_i = torch.randn(tokens, e, generator=gen).softmax(-1).topk(k, dim=-1)

    def expert(which: Any, xs: torch.Tensor) -> torch.Tensor:
        a, b = expert_linear(xs, w_in, which).chunk(2, dim=-1)
        return expert_linear(F.silu(a) * b, w_out, which)

    ref = experts_ref(x, top_i, top_w, expert)
    torch.testing.assert_close(experts_sync_free(x, top_i, top_w, expert, e), ref, rtol=1e-5, atol=1e-5)


def test_families_are_bucketed_by_default_on_cuda_only(tmp_path: Path) -> None:
    """``decode_step=None`` buckets a family on CUDA (whatever its kernels: the step runs the family's own
    forward) and keeps the plain forward on the CPU; ``True`` / ``False`` force it anywhere."""
    save_case("bamba_gqa", tmp_path, seed=0)
    model = local_model.load(tmp_path).module
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _bucketed_decode(model, None, cuda, None)
    assert not _bucketed_decode(model, None, cpu, None)
    assert _bucketed_decode(model, True, cpu, None)
    assert not _bucketed_decode(model, False, cuda, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("block_size", [16, 8])
def test_cuda_family_decode_replays_graphs_without_syncing(
    block_size: int, tmp_path: Path
) -> None:  # pragma: no cover - GPU only
    """On CUDA the family buckets replay CUDA graphs (attention through the Triton paged decode kernel with
    16-token blocks, through the masked gather with 8): the replay and the copies into the graph's buffers
    run with sync debug mode set to error, and the greedy tokens equal the plain forward's."""
    save_case("bamba_mha_tied_bias", tmp_path, seed=0)  # head_dim 16: the paged kernel's smallest
    gpu = local_model.load(tmp_path, device="cuda")
    ps = prompts(5, 17, 30)
    outputs = []
    for decode_step in (False, True):
        engine = make_engine(gpu, decode_step, cuda_graphs=True, block_size=block_size)
        outputs.append(generate(engine, ps))
    assert outputs[0] == outputs[1]
    engine = make_engine(gpu, True, cuda_graphs=True, block_size=block_size)
    assert engine.runner.bucketed is not None
    assert engine.runner.bucketed.step.gather == (block_size < 16)  # type: ignore[attr-defined]
    bd = engine.runner.bucketed
    assert bd is not None and bd.use_graphs and 1 in bd.graphs
    engine.submit_sync(ps[0], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    with torch.inference_mode():
        while not engine.running_sequences() or engine.running_sequences()[0].num_computed < 5:
            engine.step()
        seq = engine.running_sequences()[0]
        meta = engine.runner.prepare([[seq.tokens[-1]]], [seq.table.blocks], [seq.num_computed], [seq.slot])
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            logits = engine.runner.execute(meta)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(logits).all()
