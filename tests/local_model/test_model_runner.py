"""The engine's model runner: a decode step's forward reads nothing back to the host (so it can be captured
in a CUDA graph), its metadata is built once per forward, and `DecodeStep` over the engine's paged pools
gives the runner's logits (what the CUDA-graph decode path replays on the GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import local_model
from local_model.config import JambaConfig
from local_model.decode import DecodeStep, PagedPool
from local_model.engine import Engine, EngineConfig, SamplingParams
from local_model.engine.model_runner import StepMetadata
from local_model.kernels import DEFAULT_KERNELS
from local_model.model import JambaForCausalLM
from tests.support.host_sync import HostSyncRecorder
from tests.support.mamba2 import save_case


def decoding_engine(batch: int = 3, model: torch.nn.Module | None = None) -> tuple[Engine, list[Any]]:
    """An engine (default: a tiny random Jamba) whose ``batch`` sequences are all past prefill (the next
    step decodes)."""
    torch.manual_seed(0)
    if model is None:
        cfg = JambaConfig.preset("tiny", vocab_size=320, eos_token_id=2, pad_token_id=0, bos_token_id=1)
        model = JambaForCausalLM(cfg)
    engine = Engine(model, None, EngineConfig(memory_budget_mb=16, block_size=16, max_model_len=1024))
    gen = torch.Generator().manual_seed(1)
    streams = [
        engine.submit_sync(
            torch.randint(3, 320, (5 + 7 * i,), generator=gen).tolist(),
            SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True),
        )
        for i in range(batch)
    ]
    with torch.inference_mode():
        while any(s.prefill_target > s.num_computed for s in engine.running_sequences()) or not (
            engine.running_sequences()
        ):
            engine.step()
    return engine, streams


def decode_metadata(engine: Engine) -> StepMetadata:
    seqs = engine.running_sequences()
    return engine.runner.prepare(
        [[s.tokens[-1]] for s in seqs],
        [s.table.blocks for s in seqs],
        [s.num_computed for s in seqs],
        [s.slot for s in seqs],
    )


def test_decode_step_forward_reads_nothing_back_to_the_host() -> None:
    engine, _ = decoding_engine()
    meta = decode_metadata(engine)
    assert meta.is_decode and meta.uniform and meta.fresh_slots is None
    assert meta.query_start_loc.tolist() == list(range(meta.batch + 1))
    assert bool(meta.has_initial_state.all())
    with torch.inference_mode(), HostSyncRecorder() as rec:
        logits = engine.runner.execute(meta)
    assert logits.shape == (meta.batch, 320)
    assert rec.forward_syncs() == [], [n for n, _ in rec.forward_syncs()]
    assert rec.hits, "the recorder saw the reference MoE's syncs (it is active)"


@pytest.mark.parametrize("family", ["granite_moe_rope", "zamba2_shared_lora_rope"])
def test_mamba2_family_decode_forward_reads_nothing_back_to_the_host(family: str, tmp_path: Path) -> None:
    save_case(family, tmp_path, seed=0)
    engine, _ = decoding_engine(model=local_model.load(tmp_path).module)
    meta = decode_metadata(engine)
    with torch.inference_mode(), HostSyncRecorder() as rec:
        engine.runner.execute(meta)
    assert rec.forward_syncs() == [], [n for n, _ in rec.forward_syncs()]


def test_prefill_metadata_packs_tokens_and_flags_fresh_slots() -> None:
    engine, _ = decoding_engine(batch=1)
    seq = engine.running_sequences()[0]
    meta = engine.runner.prepare([[5, 6, 7], [8]], [seq.table.blocks, [3]], [0, 4], [0, 1])
    assert meta.input_ids.tolist() == [5, 6, 7, 8]
    assert meta.query_start_loc.tolist() == [0, 3, 4]
    assert meta.has_initial_state.tolist() == [False, True]
    assert meta.fresh_slots is not None and meta.fresh_slots.tolist() == [0]
    assert meta.padded_ids().tolist() == [[5, 6, 7], [8, 0, 0]]
    assert meta.block_table.shape == (2, 1) and meta.block_table[1, 0].item() == 3


def test_decode_step_over_paged_pools_gives_the_runner_logits() -> None:
    """The CUDA-graph decode path's eager body, on the CPU with the reference kernels."""
    engine, _ = decoding_engine()
    meta = decode_metadata(engine)
    runner = engine.runner
    saved = {i: (k.clone(), v.clone()) for i, (k, v) in runner.kv_pools.items()}
    states = {i: (s.conv.clone(), s.ssm.clone()) for i, s in runner.mamba.items()}
    with torch.inference_mode():
        ref = runner.execute(meta)
        for i, (k, v) in saved.items():
            runner.kv_pools[i][0].copy_(k)
            runner.kv_pools[i][1].copy_(v)
        for i, (c, s) in states.items():
            runner.mamba[i].conv.copy_(c)
            runner.mamba[i].ssm.copy_(s)
        layers = [
            PagedPool(*runner.kv_pools[i], runner.block_size) if i in runner.kv_pools else runner.mamba[i]
            for i in range(runner.num_entries)
        ]
        from local_model.cache import HybridCache

        step = DecodeStep(
            engine.model,
            HybridCache(layers, torch.zeros(1, dtype=torch.long)),
            DEFAULT_KERNELS,
            scratch_slot=engine.slots.num_slots - 1,
        )
        ours = step.forward(meta.input_ids, meta.state_indices, meta.context_lens, meta.block_table)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_bucketed_decode_step_generates_what_the_model_forward_generates() -> None:
    """Decode through `DecodeStep` in batch buckets (eager here, CUDA graphs on the GPU): 3 sequences fill a
    bucket of 4 whose padding row writes only the scratch slot and block; greedy outputs are unchanged."""
    cfg = JambaConfig.preset("tiny", vocab_size=320, eos_token_id=2, pad_token_id=0, bos_token_id=1)
    model = JambaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 320, (n,), generator=gen).tolist() for n in (5, 19, 40)]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    outputs = []
    for decode_step in (False, True):
        engine = Engine(
            model, None, EngineConfig(memory_budget_mb=16, block_size=16, decode_step=decode_step)
        )
        assert (engine.runner.bucketed is not None) == decode_step
        streams = [engine.submit_sync(p, params) for p in prompts]
        engine.run_until_idle()
        outputs.append([s.result().choices[0].token_ids for s in streams])
        if decode_step:
            assert engine.runner.bucketed is not None and 4 in engine.runner.bucketed.bufs
    assert outputs[0] == outputs[1]


def test_bucketed_decode_logits_survive_the_next_step_of_their_bucket() -> None:
    """The bucket's output buffer is rewritten by every step of that bucket (a CUDA graph replays into it);
    the logits a step returns are the caller's until it samples them."""
    cfg = JambaConfig.preset("tiny", vocab_size=320, eos_token_id=2, pad_token_id=0, bos_token_id=1)
    model = JambaForCausalLM(cfg)
    engine = Engine(model, None, EngineConfig(memory_budget_mb=16, block_size=16, decode_step=True))
    engine.submit_sync([5, 6, 7, 8, 9], SamplingParams(max_tokens=4, temperature=0.0))
    with torch.inference_mode():
        while not engine.running_sequences() or engine.running_sequences()[0].num_computed < 5:
            engine.step()
        seq = engine.running_sequences()[0]
        first = engine.runner.execute(decode_metadata(engine))
        kept = first.clone()
        meta = engine.runner.prepare([[11]], [seq.table.blocks], [seq.num_computed + 1], [seq.slot])
        second = engine.runner.execute(meta)
    assert engine.runner.bucketed is not None and list(engine.runner.bucketed.bufs) == [1]
    assert not torch.equal(second, kept)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)


def test_decode_and_one_token_prefill_chunk_in_one_step_keep_their_own_logits() -> None:
    """A 17-token prompt prefills up to its last block boundary (16), then its last token alone: that chunk
    runs in the step where the 5-token prompt decodes its second token, both through bucket 1, and the
    two rows' logits are sampled together after both forwards. Greedy outputs equal the model forward's."""
    torch.manual_seed(0)
    cfg = JambaConfig.preset("tiny", vocab_size=320, eos_token_id=2, pad_token_id=0, bos_token_id=1)
    model = JambaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 320, (n,), generator=gen).tolist() for n in (5, 17)]
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    outputs = []
    for decode_step in (False, True):
        engine = Engine(
            model, None, EngineConfig(memory_budget_mb=16, block_size=16, decode_step=decode_step)
        )
        streams = [engine.submit_sync(p, params) for p in prompts]
        engine.run_until_idle()
        outputs.append([s.result().choices[0].token_ids for s in streams])
    assert outputs[0] == outputs[1]
    assert outputs[0][0][1] != outputs[0][1][0], "the two rows' tokens differ (the test can see a mix-up)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_step_does_not_synchronise() -> None:  # pragma: no cover - GPU only
    """On CUDA with the Triton bundle a decode step replays a CUDA graph; its replay, and the metadata
    copies into the graph's buffers, run with sync debug mode set to error."""
    from local_model.kernels import triton_bundle

    cfg = JambaConfig.preset("tiny", vocab_size=320)
    model = JambaForCausalLM(cfg).cuda()
    model.set_kernels(triton_bundle())
    engine = Engine(model, None, EngineConfig(memory_budget_mb=16, block_size=16, cuda_graphs=True))
    assert engine.runner.bucketed is not None and engine.runner.bucketed.use_graphs
    engine.submit_sync([5, 6, 7, 8, 9], SamplingParams(max_tokens=4, temperature=0.0))
    with torch.inference_mode():
        while not engine.running_sequences() or engine.running_sequences()[0].num_computed < 5:
            engine.step()
        meta = decode_metadata(engine)
        eager = engine.runner.forward(meta).float()  # advances state: compare the graph on a copy below
        engine.runner.execute(meta)  # captures the bucket's graph
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            graphed = engine.runner.execute(meta)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert graphed.shape == eager.shape and torch.isfinite(graphed).all()
