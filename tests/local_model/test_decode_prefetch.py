"""The decode step's L2 prefetch from a side stream: its setting, what it requests where, and (on the GPU)
that it changes when weights arrive, never what the step computes."""

from __future__ import annotations

import pytest
import torch

from local_model.config import JambaConfig
from local_model.decode import DecodeStep, L2Prefetch
from local_model.kernels import DEFAULT_KERNELS
from local_model.kernels.reference import prefetch_weights_ref
from local_model.model import JambaForCausalLM, MambaMixer

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("0", L2Prefetch(max_bytes=0)),
        ("16", L2Prefetch(max_bytes=16 << 20)),
        ("0.5:normal", L2Prefetch(max_bytes=1 << 19, evict_last=False)),
        ("8:ffn", L2Prefetch(max_bytes=8 << 20, at=("ffn",))),
        ("8:last:mixer", L2Prefetch(max_bytes=8 << 20, at=("mixer",))),
    ],
)
def test_prefetch_setting_reads_the_environment(monkeypatch, spec, expect):
    monkeypatch.setenv("HYBRIDGATE_L2_PREFETCH", spec)
    assert L2Prefetch.from_env() == expect


def test_prefetch_setting_defaults_when_unset_and_names_a_bad_one(monkeypatch):
    monkeypatch.delenv("HYBRIDGATE_L2_PREFETCH", raising=False)
    assert L2Prefetch.from_env(default_mb=2) == L2Prefetch(max_bytes=2 << 20)
    for bad in ("lots", "8:soon", "-1"):
        monkeypatch.setenv("HYBRIDGATE_L2_PREFETCH", bad)
        with pytest.raises(ValueError, match="HYBRIDGATE_L2_PREFETCH"):
            L2Prefetch.from_env()


def _tiny_step(
    device: str = "cpu", prefetch: L2Prefetch | None = None
) -> tuple[DecodeStep, JambaForCausalLM]:
    model = JambaForCausalLM(JambaConfig.preset("tiny"), seed=3).to(device).eval()
    pool = model.allocate_cache(2, 16, num_slots=4)
    return DecodeStep(model, pool, DEFAULT_KERNELS, prefetch=prefetch), model


def test_prefetch_plan_requests_each_layers_weights_before_the_chain_reads_them():
    """At each mixer: its projections after the first, then its FFN's weights (MoE experts apart, asked for
    only at enough rows); at each FFN: the next layer's mixer from its first projection, lm_head last."""
    step, model = _tiny_step()
    plan = step._prefetch_lists()
    layers = model.model.layers
    for i, layer in enumerate(layers):
        always, experts = plan[("mixer", i)]
        mixer, ff = layer.mixer, layer.feed_forward
        if isinstance(mixer, MambaMixer):
            head = [mixer.x_proj.weight, mixer.dt_proj.weight, mixer.out_proj.weight]
        else:
            head = [mixer.o_proj.weight]
        assert [t.data_ptr() for t in always[: len(head)]] == [t.data_ptr() for t in head]
        if layer.is_moe:
            assert always[len(head) :] == [ff.router.weight]
            assert experts == [ff.experts.gate_up_proj, ff.experts.down_proj]
        else:
            assert always[-1] is ff.down_proj.weight and experts == []
        nxt, _ = plan[("ffn", i)]
        if i + 1 < len(layers):
            m = layers[i + 1].mixer
            first = m.in_proj.weight if isinstance(m, MambaMixer) else None
            if first is not None:
                assert nxt[0] is first
        else:
            assert nxt == [model.lm_head.weight]


def test_prefetch_is_off_the_gpu_and_its_reference_does_nothing():
    step, _ = _tiny_step(prefetch=L2Prefetch(max_bytes=1 << 20))
    assert step._side is None  # no side stream on the CPU
    w = torch.randn(4, 4)
    assert prefetch_weights_ref(tensors=[w], max_bytes=1 << 20) == 0


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_prefetch_weights_requests_up_to_its_budget_in_order():  # pragma: no cover - GPU only
    from local_model.kernels.triton_ops import prefetch_weights

    a = torch.randn(1000, 1000, device="cuda", dtype=torch.bfloat16)  # 2,000,000 bytes
    b = torch.randn(300, 1000, device="cuda", dtype=torch.bfloat16)
    assert prefetch_weights(tensors=[a, b], max_bytes=10**7) == a.nbytes + b.nbytes
    assert prefetch_weights(tensors=[a, b], max_bytes=2_100_000) == 2_100_000
    assert prefetch_weights(tensors=[a], max_bytes=0) == 0
    assert prefetch_weights(tensors=[a, b], max_bytes=10**7, evict_last=False) == a.nbytes + b.nbytes
    with pytest.raises(ValueError, match="contiguous"):
        prefetch_weights(tensors=[a.t()], max_bytes=10**7)
    torch.cuda.synchronize()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("evict_last", [True, False])
def test_step_with_l2_prefetch_replays_the_same_bits(rows, evict_last):  # pragma: no cover - GPU only
    """Graph-captured greedy steps with the side-stream prefetch (every request point, experts included at
    16 rows) give the tokens and logits of the step without it, to the bit."""
    from local_model.kernels import triton_bundle

    model = JambaForCausalLM(JambaConfig.preset("tiny"), seed=3).cuda().to(torch.bfloat16).eval()
    model.set_kernels(triton_bundle())
    results = []
    for pf in (L2Prefetch(max_bytes=0), L2Prefetch(max_bytes=1 << 20, evict_last=evict_last)):
        pool = model.allocate_cache(rows, 64, num_slots=rows + 1)
        step = DecodeStep(model, pool, triton_bundle(), prefetch=pf)
        assert (step._side is not None) == (pf.max_bytes > 0)
        gen = torch.Generator().manual_seed(5)
        ids = torch.randint(3, 256, (rows,), generator=gen).cuda()
        with torch.inference_mode():
            bucket = step.start(
                ids, torch.arange(rows, device="cuda"), torch.zeros(rows, device="cuda").long()
            )
            hist = step.run(bucket, 6).clone()
            logits = step.static[bucket]["logits"].clone()
        results.append((hist, logits))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
