"""The Triton kernel bundle against the pure-PyTorch references, on fresh random inputs.

Without CUDA the kernels run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1) on small
shapes; with CUDA the same tests run on the GPU, plus the `gpu`-marked ones at model sizes.
Tolerances: fp32 relative error (‖out − ref‖ / ‖ref‖) ≤ 1e-5, bf16 ≤ 1e-2, never NaN.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from local_model.kernels import reference as ref  # noqa: E402
from local_model.kernels import triton_ops as tk  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def rel(out: torch.Tensor, expect: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in kernel output"
    return float((out.double() - expect.double()).norm() / expect.double().norm().clamp_min(1e-30))


def skip_interpreted_bf16(dtype: torch.dtype) -> None:
    """Triton 3.9's interpreter gets bf16 tl.dot wrong and truncates fp32 -> bf16 casts (the GPU rounds to
    nearest), so kernels with bf16 dots or many bf16 roundings are checked in bf16 on the GPU only."""
    if not CUDA and dtype == torch.bfloat16:
        pytest.skip("checked in bf16 on the GPU only")


def tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-2


def scan_inputs(batch: int, dim: int, n: int, t: int, dtype: torch.dtype, gen: torch.Generator):
    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen).to(DEV)

    u, delta, z = r(batch, dim, t).to(dtype), r(batch, dim, t).to(dtype), r(batch, dim, t).to(dtype)
    a = -(torch.rand(dim, n, generator=gen) + 0.5).to(DEV)
    b, c = r(batch, n, t).to(dtype), r(batch, n, t).to(dtype)
    return u, delta, a, b, c, r(dim), z, r(dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_chunks", [1, 3, 9])
def test_selective_scan_matches_reference_with_ragged_rows_and_state_pool(dtype, n_chunks):
    gen = torch.Generator().manual_seed(n_chunks)
    batch, dim, n, t = 3, 37, 16, 23
    u, delta, a, b, c, d, z, bias = scan_inputs(batch, dim, n, t, dtype, gen)
    seq_lens = torch.tensor([23, 7, 0], device=DEV)
    slots = torch.tensor([4, 0, 2], device=DEV)
    pool = torch.randn(5, dim, n, generator=gen).to(DEV)
    pool_ref = pool.clone()
    expect = ref.selective_scan_ref(u, delta, a, b, c, d, z, bias, True, pool_ref, slots, seq_lens)
    got = tk.selective_scan(
        u=u,
        delta=delta,
        A=a,
        B=b,
        C=c,
        D=d,
        z=z,
        delta_bias=bias,
        delta_softplus=True,
        ssm_state=pool,
        state_indices=slots,
        seq_lens=seq_lens,
        n_chunks=n_chunks,
    )
    valid = torch.arange(t, device=DEV)[None, :] < seq_lens[:, None]
    assert rel(got.transpose(1, 2)[valid], expect.transpose(1, 2)[valid]) <= tol(dtype)
    assert rel(pool, pool_ref) <= (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("n_chunks", [None, 4])
def test_selective_scan_varlen_packed_sequences_take_initial_state_only_where_flagged(n_chunks):
    gen = torch.Generator().manual_seed(7)
    dim, n = 19, 16
    cu = torch.tensor([0, 5, 17, 30, 31], device=DEV)
    total = 31
    u, delta, z = (torch.randn(dim, total, generator=gen).to(DEV) for _ in range(3))
    a = -(torch.rand(dim, n, generator=gen) + 0.5).to(DEV)
    b, c = (torch.randn(n, total, generator=gen).to(DEV) for _ in range(2))
    d, bias = torch.randn(dim, generator=gen).to(DEV), torch.randn(dim, generator=gen).to(DEV)
    pool = torch.randn(6, dim, n, generator=gen).to(DEV)
    slots = torch.tensor([5, 1, 3, 0], device=DEV)
    has_init = torch.tensor([True, False, True, False], device=DEV)
    pool_ref = pool.clone()
    expect = ref.selective_scan_varlen_ref(u, delta, a, b, c, cu, d, z, bias, True, pool_ref, slots, has_init)
    got = tk.selective_scan_varlen(
        u=u,
        delta=delta,
        A=a,
        B=b,
        C=c,
        cu_seqlens=cu,
        D=d,
        z=z,
        delta_bias=bias,
        delta_softplus=True,
        ssm_state=pool,
        state_indices=slots,
        has_initial_state=has_init,
        n_chunks=n_chunks,
    )
    assert rel(got, expect) <= 1e-5
    assert rel(pool, pool_ref) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_state_update_matches_reference_and_skips_padding_slots(dtype):
    gen = torch.Generator().manual_seed(3)
    batch, dim, n = 5, 37, 16
    x, dt, z = (torch.randn(batch, dim, generator=gen).to(DEV).to(dtype) for _ in range(3))
    a = -(torch.rand(dim, n, generator=gen) + 0.5).to(DEV)
    b, c = (torch.randn(batch, n, generator=gen).to(DEV).to(dtype) for _ in range(2))
    d, bias = torch.randn(dim, generator=gen).to(DEV), torch.randn(dim, generator=gen).to(DEV)
    pool = torch.randn(7, dim, n, generator=gen).to(DEV)
    slots = torch.tensor([6, 2, -1, 0, 3], device=DEV)
    pool_ref = pool.clone()
    keep = slots >= 0
    expect = ref.selective_state_update_ref(
        pool_ref, x[keep], dt[keep], a, b[keep], c[keep], d, z[keep], bias, True, slots[keep]
    )
    got = tk.selective_state_update(
        ssm_state=pool,
        x=x,
        dt=dt,
        A=a,
        B=b,
        C=c,
        D=d,
        z=z,
        dt_bias=bias,
        dt_softplus=True,
        state_indices=slots,
    )
    assert rel(got[keep], expect) <= tol(dtype)
    assert rel(pool, pool_ref) <= (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_conv1d_with_state_and_its_update_match_reference(dtype):
    gen = torch.Generator().manual_seed(4)
    batch, dim, t, w = 3, 45, 11, 4
    x = torch.randn(batch, dim, t, generator=gen).to(DEV).to(dtype)
    weight, bias = torch.randn(dim, w, generator=gen).to(DEV), torch.randn(dim, generator=gen).to(DEV)
    state = torch.randn(4, dim, w - 1, generator=gen).to(DEV).to(dtype)
    slots = torch.tensor([3, 0, 1], device=DEV)
    seq_lens = torch.tensor([11, 2, 0], device=DEV)
    state_ref = state.clone()
    expect = ref.causal_conv1d_ref(x, weight, bias, "silu", state_ref, slots, seq_lens)
    got = tk.causal_conv1d(
        x=x,
        weight=weight,
        bias=bias,
        activation="silu",
        conv_state=state,
        state_indices=slots,
        seq_lens=seq_lens,
    )
    valid = torch.arange(t, device=DEV)[None, :] < seq_lens[:, None]
    assert rel(got.transpose(1, 2)[valid], expect.transpose(1, 2)[valid]) <= tol(dtype)
    assert torch.equal(state, state_ref)
    fresh = tk.causal_conv1d(x=x, weight=weight, bias=None, activation=None)
    assert rel(fresh, ref.causal_conv1d_ref(x, weight, None, None)) <= tol(dtype)

    step = torch.randn(batch, dim, generator=gen).to(DEV).to(dtype)
    slots = torch.tensor([2, -1, 0], device=DEV)
    keep = slots >= 0
    expect = ref.causal_conv1d_update_ref(step[keep], state_ref, weight, bias, "silu", slots[keep])
    got = tk.causal_conv1d_update(
        x=step, conv_state=state, weight=weight, bias=bias, activation="silu", state_indices=slots
    )
    assert rel(got[keep], expect) <= tol(dtype)
    assert torch.equal(state, state_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_and_without_residual_matches_reference(dtype):
    gen = torch.Generator().manual_seed(5)
    x, res = (torch.randn(3, 5, 67, generator=gen).to(DEV).to(dtype) for _ in range(2))
    w = torch.randn(67, generator=gen).to(DEV).to(dtype)
    assert rel(tk.rms_norm(x=x, weight=w, eps=1e-6), ref.rms_norm_ref(x, w, 1e-6)) <= tol(dtype)
    out, new_res = tk.rms_norm(x=x, weight=w, eps=1e-6, residual=res)
    e_out, e_res = ref.rms_norm_ref(x, w, 1e-6, residual=res)
    assert rel(out, e_out) <= tol(dtype)
    assert rel(new_res, e_res) <= tol(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 7])
def test_moe_experts_grouped_gemm_matches_reference(dtype, tokens):
    skip_interpreted_bf16(dtype)
    gen = torch.Generator().manual_seed(6 + tokens)
    e, k, h, i = 4, 2, 32, 48
    x = torch.randn(tokens, h, generator=gen).to(DEV).to(dtype)
    logits = torch.randn(tokens, e, generator=gen).to(DEV)
    w, idx = torch.topk(torch.softmax(logits, -1), k, dim=-1)
    gate_up = (torch.randn(e, 2 * i, h, generator=gen) * 0.2).to(DEV).to(dtype)
    down = (torch.randn(e, h, i, generator=gen) * 0.2).to(DEV).to(dtype)
    import torch.nn.functional as F

    expect = ref.moe_experts_ref(x, idx, w.to(dtype), gate_up, down, F.silu)
    got = tk.moe_experts(
        x=x, top_k_index=idx, top_k_weights=w.to(dtype), gate_up_proj=gate_up, down_proj=down, act=F.silu
    )
    assert rel(got, expect) <= tol(dtype)


def test_moe_align_groups_pairs_by_expert_in_padded_blocks():
    idx = torch.tensor([[2, 0], [2, 3], [0, 2]], device=DEV)
    sorted_ids, block_expert = tk.moe_align(idx, 4, 4)
    flat = idx.reshape(-1)
    for blk, expert in enumerate(block_expert.tolist()):
        ids = [p for p in sorted_ids[blk * 4 : blk * 4 + 4].tolist() if p < flat.numel()]
        assert all(int(flat[p]) == expert for p in ids)
    assert sorted(p for p in sorted_ids.tolist() if p < flat.numel()) == list(range(flat.numel()))


def test_moe_experts_of_a_single_routed_pair_match_reference():
    """One token routed to one expert: the pair count is 1, which the GPU compiler specialises to a
    constant (the sort must not treat it as a tensor)."""
    case = _moe_case(60, 1, 1, torch.float32)
    assert rel(tk.moe_experts(**case), _moe_expect(case)) <= tol(torch.float32)
    sorted_ids, block_expert = tk.moe_align(case["top_k_index"], 6, 16)
    assert sorted_ids.tolist().count(0) == 1 and int(block_expert[0]) == int(case["top_k_index"][0, 0])


def _moe_case(
    seed: int, tokens: int, k: int, dtype: torch.dtype, e: int = 6, h: int = 40, i: int = 56
) -> dict:
    """Random experts and routing (top-k of a softmax) for `moe_experts`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, h, generator=gen).to(DEV).to(dtype)
    w, idx = torch.topk(torch.softmax(torch.randn(tokens, e, generator=gen), -1), k, dim=-1)
    return {
        "x": x,
        "top_k_index": idx.to(DEV),
        "top_k_weights": w.to(DEV).to(dtype),
        "gate_up_proj": (torch.randn(e, 2 * i, h, generator=gen) * 0.2).to(DEV).to(dtype),
        "down_proj": (torch.randn(e, h, i, generator=gen) * 0.2).to(DEV).to(dtype),
        "act": torch.nn.functional.silu,
    }


def _moe_expect(case: dict) -> torch.Tensor:
    return ref.moe_experts_ref(
        case["x"],
        case["top_k_index"],
        case["top_k_weights"],
        case["gate_up_proj"],
        case["down_proj"],
        case["act"],
    )


def _locks_at_zero() -> bool:
    from local_model.kernels import triton_gemm as tg

    return all(int(buf.abs().sum()) == 0 for buf in tg._LOCKS.values())


# (gate/up, down) launches: the heuristic's; gate/up on half blocks of the alignment; down on half blocks
MOE_LAUNCHES = {
    "default": None,
    "gate_up_sub_blocks": ((16, 32, 32), (32, 16, 16)),
    "down_sub_blocks": ((32, 32, 32), (16, 16, 16)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [5, 13])
@pytest.mark.parametrize("top_k", [1, 2, 4])
@pytest.mark.parametrize("launch", list(MOE_LAUNCHES))
def test_moe_experts_token_sum_in_the_down_gemm_gives_the_separate_sums_bits(dtype, tokens, top_k, launch):
    """The down GEMM's own k-order sum of each token's routed rows is bit for bit `.sum(1)` over the same
    rows, on every launch shape; repeatable; its column counters are back at zero after each launch."""
    skip_interpreted_bf16(dtype)
    from local_model.kernels import triton_moe as tm

    case = _moe_case(50 + tokens + top_k, tokens, top_k, dtype)
    blocks = MOE_LAUNCHES[launch]
    cfg = blocks and tm.MoeConfig(tm.MoeGemmConfig(*blocks[0]), tm.MoeGemmConfig(*blocks[1]))
    assert tm.fused_sum_applies(tokens, top_k)
    fused = tk.moe_experts(**case, config=cfg)
    assert _locks_at_zero()
    assert torch.equal(fused, tk.moe_experts(**case, config=cfg, fused_sum=False))
    assert torch.equal(fused, tk.moe_experts(**case, config=cfg))
    assert _locks_at_zero()
    assert rel(fused, _moe_expect(case)) <= tol(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split_k", [2, 3])
def test_moe_experts_down_projection_split_over_k_matches_reference_and_repeats(dtype, split_k):
    """Splits of the down projection's K: the last program of a column block sums the splits in order,
    then the routed rows in k order; the same bits run after run, counters back at zero."""
    skip_interpreted_bf16(dtype)
    from local_model.kernels import triton_moe as tm

    case = _moe_case(60 + split_k, 7, 2, dtype)
    cfg = tm.MoeConfig(tm.MoeGemmConfig(16, 32, 32), tm.MoeGemmConfig(16, 16, 16, split_k=split_k))
    got = tk.moe_experts(**case, config=cfg)
    assert _locks_at_zero()
    assert torch.equal(got, tk.moe_experts(**case, config=cfg))
    assert rel(got, _moe_expect(case)) <= tol(dtype)


@pytest.mark.parametrize("split_k", [1, 2])
def test_moe_experts_with_the_pre_wait_weight_prefetch_give_the_same_bits(split_k):
    """Requesting the experts' first K steps into L2 before the PDL wait (GPU only: the prefetch is PTX)
    changes no bit, with the down GEMM split over K or not."""
    from local_model.kernels import triton_moe as tm

    case = _moe_case(90 + split_k, 33, 2, torch.float32)
    plain = tm.MoeConfig(tm.MoeGemmConfig(16, 16, 32), tm.MoeGemmConfig(16, 16, 32, split_k=split_k))
    pf = tm.MoeConfig(
        tm.MoeGemmConfig(16, 16, 32, prefetch_lines=4),
        tm.MoeGemmConfig(16, 16, 32, split_k=split_k, prefetch_lines=4),
    )
    got = tk.moe_experts(**case, config=pf)
    assert torch.equal(got, tk.moe_experts(**case, config=plain))
    assert _locks_at_zero()


def test_embedding_gather_leaves_its_rows_sums_of_squares():
    from local_model.kernels.triton_decode import embed_with_ssq

    table = torch.randn(50, 72, generator=torch.Generator().manual_seed(8)).to(DEV)
    ids = torch.tensor([3, 49, 0, 3, 17], device=DEV)
    rows, ssq = embed_with_ssq(ids=ids, table=table)
    assert torch.equal(rows, table[ids]) and ssq.shape == (1, 5)
    assert rel(ssq[0], (table[ids] ** 2).sum(1)) <= 1e-6


def test_moe_experts_residual_adds_the_stream_and_leaves_its_sums_of_squares():
    """The experts' token sum with the layer's residual add in it: the rows `moe_experts` + residual gives,
    and per-column-block sums of squares whose total is each row's."""
    from local_model.kernels import triton_moe as tm

    case = _moe_case(95, 9, 2, torch.float32)
    cfg = tm.MoeConfig(tm.MoeGemmConfig(16, 16, 32), tm.MoeGemmConfig(16, 16, 32))
    res = torch.randn(case["x"].shape, generator=torch.Generator().manual_seed(5)).to(DEV)
    kw = {key: v for key, v in case.items() if key != "act"}
    s, ssq = tm.moe_experts_residual(**kw, residual=res, config=cfg)
    expect = tk.moe_experts(**case, config=cfg) + res
    assert rel(s, expect) <= 1e-6
    assert ssq.shape == (-(-res.shape[1] // 16), res.shape[0])
    assert rel(ssq.sum(0), (s * s).sum(1)) <= 1e-6
    assert _locks_at_zero()


def test_moe_experts_sums_outside_the_gemm_past_four_experts_a_token():
    """Past k = 4 PyTorch's sum no longer adds in k order: the rows are summed by `.sum(1)` after."""
    from local_model.kernels import triton_moe as tm

    case = _moe_case(70, 5, 5, torch.float32)
    assert not tm.fused_sum_applies(5, 5)
    assert rel(tk.moe_experts(**case), _moe_expect(case)) <= 1e-5


def test_moe_config_takes_the_measured_launch_of_the_shape_and_token_bucket(monkeypatch):
    from local_model.kernels import triton_moe as tm

    measured = tm.MoeConfig(tm.MoeGemmConfig(16, 32, 32, 8, 4), tm.MoeGemmConfig(32, 16, 64, 4, 2, split_k=2))
    monkeypatch.setitem(tm.MOE_SHAPES, (6, 40, 56, 2, 16), measured)
    assert tm.moe_config(9, 2, 6, 40, 56) == measured
    assert tm.moe_config(16, 2, 6, 40, 56) == measured
    assert tm.moe_config(17, 2, 6, 40, 56) != measured
    case = _moe_case(71, 9, 2, torch.float32)
    assert rel(tk.moe_experts(**case), _moe_expect(case)) <= 1e-5
    assert _locks_at_zero()


@gpu
@pytest.mark.parametrize("tokens", [16, 64])
def test_moe_experts_token_sum_in_the_down_gemm_gives_the_separate_sums_bits_at_model_size(tokens):
    """The 426M model's experts (8 x [5632, 1024] gate/up, 8 x [1024, 2816] down, top-2) in bf16; with and
    without PDL: the same bits."""
    from local_model.kernels import triton_moe as tm

    case = _moe_case(72, tokens, 2, torch.bfloat16, e=8, h=1024, i=2816)
    fused = tk.moe_experts(**case)
    assert torch.equal(fused, tk.moe_experts(**case, fused_sum=False))
    assert torch.equal(fused, tk.moe_experts(**case))
    heur = tm.moe_config(tokens, 2, 8, 1024, 2816)
    assert torch.equal(fused, tk.moe_experts(**case, config=heur, pdl=False))
    assert torch.equal(fused, tk.moe_experts(**case, config=heur, pdl=True))
    assert _locks_at_zero()
    assert rel(fused, _moe_expect(case)) <= 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page", [0, 16, 4, 12])  # 0: a contiguous per-slot cache
@pytest.mark.parametrize("splits", [1, 4])
def test_attention_decode_matches_reference_on_contiguous_and_paged_caches(dtype, page, splits):
    """Pages of 16 are one tile; pages smaller than the tensor cores' 16 positions or not a power of two
    (an engine `block_size` of 4 or 12) are gathered into tiles position by position."""
    skip_interpreted_bf16(dtype)
    gen = torch.Generator().manual_seed(8)
    batch, heads, kv_heads, hd = 3, 4, 2, 16
    lens = torch.tensor([1, 9, 37], device=DEV)
    q = torch.randn(batch, heads, hd, generator=gen).to(DEV).to(dtype)
    if page:
        per_row = -(-40 // page)
        blocks = batch * per_row + 2
        k = torch.randn(blocks, kv_heads, page, hd, generator=gen).to(DEV).to(dtype)
        v = torch.randn(blocks, kv_heads, page, hd, generator=gen).to(DEV).to(dtype)
        table = torch.randperm(blocks, generator=gen)[: batch * per_row].view(batch, per_row).to(DEV)
        kw = {"block_table": table}
    else:
        k = torch.randn(4, kv_heads, 40, hd, generator=gen).to(DEV).to(dtype)
        v = torch.randn(4, kv_heads, 40, hd, generator=gen).to(DEV).to(dtype)
        kw = {"slots": torch.tensor([3, 0, 1], device=DEV)}
    expect = ref.attention_decode_ref(q, k, v, lens, 0.25, **kw)
    got = tk.attention_decode(
        q=q, k_cache=k, v_cache=v, context_lens=lens, scale=0.25, num_splits=splits, **kw
    )
    assert rel(got, expect) <= tol(dtype)


def test_decode_splits_only_for_long_caches_with_few_programs():
    from local_model.kernels.triton_ops import decode_splits

    assert decode_splits(8, 16384) == 1  # short cache: one program per (row, kv head)
    assert decode_splits(8, 32768) == 16  # 32K positions: splits of at least 2K
    assert decode_splits(8, 262144) == 16
    assert decode_splits(512, 262144) == 1  # enough programs already
    assert decode_splits(40, 262144) == 4  # ~2 programs per SM, a power of two


@gpu
@pytest.mark.gpu
def test_selective_scan_at_model_size_in_bf16_with_fp32_state():
    gen = torch.Generator().manual_seed(9)
    u, delta, a, b, c, d, z, bias = scan_inputs(2, 2048, 16, 4099, torch.bfloat16, gen)
    pool = torch.zeros(2, 2048, 16, device=DEV)
    pool_ref = pool.clone()
    expect = ref.selective_scan_chunked(u, delta, a, b, c, d, z, bias, True, pool_ref)
    got = tk.selective_scan(
        u=u, delta=delta, A=a, B=b, C=c, D=d, z=z, delta_bias=bias, delta_softplus=True, ssm_state=pool
    )
    assert rel(got, expect) <= 1e-2
    assert rel(pool, pool_ref) <= 1e-3


def test_router_topk_matches_reference():
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(9, 6, generator=gen).to(DEV)
    w, i = tk.router_topk(logits=logits, k=2)
    ew, ei = ref.router_topk_ref(logits=logits, k=2)
    assert torch.equal(i, ei)
    assert rel(w, ew) <= 1e-6


def ssm_step_weights(gen: torch.Generator, dim: int, rank: int, n: int, dtype: torch.dtype) -> dict:
    """The fused Mamba SSM step's per-layer weights (dt/B/C norms, dt_proj, dt bias, D, A), drawn from ``gen``."""

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen).to(DEV)

    return {
        "dt_norm_weight": r(rank).to(dtype),
        "b_norm_weight": r(n).to(dtype),
        "c_norm_weight": r(n).to(dtype),
        "dt_proj_weight": (r(dim, rank) * 0.3).to(dtype),
        "dt_bias": r(dim),
        "D": r(dim).to(dtype),
        "A": -(torch.rand(dim, n, generator=gen) + 0.5).to(DEV),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [3, 18])
def test_fused_mamba_decode_ssm_matches_reference(dtype, batch):
    skip_interpreted_bf16(dtype)
    gen = torch.Generator().manual_seed(11)
    dim, rank, n = 40, 7, 16

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen).to(DEV)

    xproj, x, z = r(batch, rank + 2 * n).to(dtype), r(batch, dim).to(dtype), r(batch, dim).to(dtype)
    weights = ssm_step_weights(gen, dim, rank, n, dtype)
    pool = r(batch + 2, dim, n)
    slots = torch.randperm(batch + 2, generator=gen)[:batch].to(DEV)
    pool_ref = pool.clone()
    expect = ref.mamba_decode_ssm_ref(
        xproj=xproj, x=x, z=z, ssm_state=pool_ref, state_indices=slots, eps=1e-6, **weights
    )
    got = tk.mamba_decode_ssm(xproj=xproj, x=x, z=z, ssm_state=pool, state_indices=slots, eps=1e-6, **weights)
    assert rel(got, expect) <= tol(dtype)
    assert rel(pool, pool_ref) <= (1e-5 if dtype == torch.float32 else 1e-2)


def _tiny_model(dtype: torch.dtype):
    from local_model.config import JambaConfig
    from local_model.model import JambaForCausalLM

    return JambaForCausalLM(JambaConfig.preset("tiny"), seed=3).to(DEV, dtype).eval()


@pytest.mark.parametrize("batch", [1, 6])
def test_decode_step_with_triton_bundle_matches_the_model_forward(batch):
    """The flat decode step (all Triton kernels, eager; the fused GEMV kernels at 1 row, norm + cuBLAS and
    the grouped MoE at 6) gives the model's own cached-forward logits, and the same cache updates."""
    from local_model.decode import DecodeStep
    from local_model.kernels import triton_bundle

    model = _tiny_model(torch.float32)
    gen = torch.Generator().manual_seed(12)
    prompt = torch.randint(0, 256, (batch, 9), generator=gen).to(DEV)
    ref_cache = model.allocate_cache(batch, 16)
    pool = model.allocate_cache(batch, 16, num_slots=batch + 2)
    slots = torch.randperm(batch + 1, generator=gen)[:batch].to(DEV)
    with torch.inference_mode():
        model(prompt, ref_cache)
        model(prompt, pool.view(slots, torch.zeros(batch, dtype=torch.long)))
        nxt = torch.randint(0, 256, (batch,), generator=gen).to(DEV)
        expect = model(nxt[:, None], ref_cache)[:, 0]
        step = DecodeStep(model, pool, triton_bundle())
        got = step.forward(nxt, slots, torch.full((batch,), 9, device=DEV))
    assert rel(got, expect) <= 1e-5
    for mine, theirs in zip(pool.layers, ref_cache.layers, strict=True):
        for a, b in zip(vars(mine).values(), vars(theirs).values(), strict=True):
            assert rel(a[slots], b[:batch]) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 7])
def test_decode_linear_matches_reference_at_one_and_more_rows(dtype, rows):
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(rows, 100, generator=gen).to(DEV).to(dtype)
    w = torch.randn(300, 100, generator=gen).to(DEV).to(dtype)
    assert rel(tk.linear(x=x, weight=w), ref.linear_ref(x=x, weight=w)) <= tol(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 7])
@pytest.mark.parametrize("variant", ["norm", "norm+residual+swiglu", "residual"])
def test_norm_linear_fuses_residual_norm_and_swiglu(dtype, rows, variant):
    skip_interpreted_bf16(dtype)
    gen = torch.Generator().manual_seed(14 + rows)
    x, res = (torch.randn(rows, 67, generator=gen).to(DEV).to(dtype) for _ in range(2))
    nw = (torch.rand(67, generator=gen) + 0.5).to(DEV).to(dtype)
    w = (torch.randn(2 * 45, 67, generator=gen) * 0.2).to(DEV).to(dtype)
    kw = {
        "norm": {"norm_weight": nw},
        "norm+residual+swiglu": {"norm_weight": nw, "residual": res, "swiglu": True},
        "residual": {"residual": res},
    }[variant]
    out, s = tk.norm_linear(x=x, weight=w, eps=1e-6, **kw)
    e_out, e_s = ref.norm_linear_ref(x=x, weight=w, eps=1e-6, **kw)
    assert rel(out, e_out) <= tol(dtype)
    assert rel(s, e_s) <= tol(dtype)


def _moe_block_args(gen: torch.Generator, e: int, h: int, i: int, k: int) -> dict:
    """`moe_block`'s weights and options for e experts of width i over hidden h, top-k."""
    return {
        "norm_weight": (torch.rand(h, generator=gen) + 0.5).to(DEV),
        "eps": 1e-6,
        "router_weight": torch.randn(e, h, generator=gen).to(DEV),
        "gate_up_proj": (torch.randn(e, 2 * i, h, generator=gen) * 0.2).to(DEV),
        "down_proj": (torch.randn(e, h, i, generator=gen) * 0.2).to(DEV),
        "top_k": k,
        "act": torch.nn.functional.silu,
    }


@pytest.mark.parametrize(("tokens", "k"), [(1, 2), (3, 2), (6, 2), (13, 1), (9, 4)])
def test_moe_block_routes_normed_tokens_like_the_reference(tokens, k):
    """From 5 tokens the route launch also sorts the pairs by expert for the grouped GEMMs (its counter
    back at zero after)."""
    gen = torch.Generator().manual_seed(15 + tokens)
    e, h, i = 5, 48, 40
    x, res = (torch.randn(tokens, h, generator=gen).to(DEV) for _ in range(2))
    args = _moe_block_args(gen, e, h, i, k)
    out, s = tk.moe_block(x=x, residual=res, **args)
    e_out, e_s = ref.moe_block_ref(x=x, residual=res, **args)
    assert rel(out, e_out) <= 1e-5
    assert rel(s, e_s) <= 1e-6
    assert _locks_at_zero()
    assert torch.equal(out, tk.moe_block(x=x, residual=res, **args)[0])


def test_moe_block_sorts_pairs_for_a_measured_launch(monkeypatch):
    """A measured launch (MOE_SHAPES) aligned to a larger block_m than the heuristic's, gate/up on half
    blocks: the route launch's sort feeds it, results as the reference, counter back at zero."""
    from local_model.kernels import triton_moe as tm

    gen = torch.Generator().manual_seed(19)
    tokens, e, k, h, i = 11, 5, 2, 48, 40
    measured = tm.MoeConfig(tm.MoeGemmConfig(16, 32, 32), tm.MoeGemmConfig(32, 16, 32))
    monkeypatch.setitem(tm.MOE_SHAPES, (e, h, i, k, 16), measured)
    assert tm.moe_config(tokens, k, e, h, i) == measured
    x, res = (torch.randn(tokens, h, generator=gen).to(DEV) for _ in range(2))
    args = _moe_block_args(gen, e, h, i, k)
    out, _ = tk.moe_block(x=x, residual=res, **args)
    assert rel(out, ref.moe_block_ref(x=x, residual=res, **args)[0]) <= 1e-5
    assert _locks_at_zero()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_mamba_conv_xproj_then_ssm_step_with_conv_match_reference(dtype, batch):
    skip_interpreted_bf16(dtype)
    gen = torch.Generator().manual_seed(16)
    dim, rank, n, width = 40, 7, 16, 4

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen).to(DEV)

    x, z = r(batch, dim).to(dtype), r(batch, dim).to(dtype)
    conv = {
        "conv_weight": (r(dim, width) * 0.5).to(dtype),
        "conv_bias": r(dim).to(dtype),
        "activation": "silu",
    }
    conv_pool, ssm_pool = r(5, dim, width - 1).to(dtype), r(5, dim, n)
    conv_ref, ssm_ref = conv_pool.clone(), ssm_pool.clone()
    slots = torch.tensor([4, 0, 2], device=DEV)[:batch]
    xw = (r(rank + 2 * n, dim) * 0.2).to(dtype)
    xp = tk.mamba_conv_xproj(x=x, conv_state=conv_pool, state_indices=slots, xproj_weight=xw, **conv)
    e_xp = ref.mamba_conv_xproj_ref(x=x, conv_state=conv_ref, state_indices=slots, xproj_weight=xw, **conv)
    assert rel(xp, e_xp) <= tol(dtype)
    assert torch.equal(conv_pool, conv_ref)  # read, not shifted
    weights = {
        **ssm_step_weights(gen, dim, rank, n, dtype),
        "eps": 1e-6,
        "state_indices": slots,
        "z": z,
        "x": x,
        "xproj": e_xp,
    }
    got = tk.mamba_decode_ssm(ssm_state=ssm_pool, conv_state=conv_pool, **conv, **weights)
    expect = ref.mamba_decode_ssm_ref(ssm_state=ssm_ref, conv_state=conv_ref, **conv, **weights)
    assert rel(got, expect) <= tol(dtype)
    assert rel(ssm_pool, ssm_ref) <= tol(dtype)
    assert torch.equal(conv_pool, conv_ref)


def _conv_inputs(
    gen: torch.Generator, rows: int, dim: int, width: int, slots: int, dtype: torch.dtype
) -> dict:
    """A decode step's conv arguments: new inputs x [rows, dim], a conv-state pool of ``slots`` windows and
    a permutation of distinct slots for the rows."""

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen).to(DEV)

    return {
        "x": r(rows, dim).to(dtype),
        "conv_state": r(slots, dim, width - 1).to(dtype),
        "conv_weight": (r(dim, width) * 0.5).to(dtype),
        "conv_bias": r(dim).to(dtype),
        "activation": "silu",
        "state_indices": torch.randperm(slots, generator=gen)[:rows].to(DEV),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "dim"), [(5, 40), (17, 40), (33, 40), (9, 160)])
def test_conv_xproj_matches_reference_reads_window_only_and_repeats_bitwise(dtype, rows, dim):
    """conv + x_proj at several rows against the reference; the window is left as it was and a second
    call gives the same bits."""
    skip_interpreted_bf16(dtype)
    gen = torch.Generator().manual_seed(40 + rows)
    rank, n, width = 7, 16, 4
    conv = _conv_inputs(gen, rows, dim, width, rows + 3, dtype)
    xw = (torch.randn(rank + 2 * n, dim, generator=gen) * 0.2).to(DEV).to(dtype)
    window = conv["conv_state"].clone()
    got = tk.mamba_conv_xproj(xproj_weight=xw, **conv)
    expect = ref.mamba_conv_xproj_ref(xproj_weight=xw, **conv)
    assert rel(got, expect) <= tol(dtype)
    assert torch.equal(conv["conv_state"], window)
    assert torch.equal(tk.mamba_conv_xproj(xproj_weight=xw, **conv), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("rows", "dim", "launch"),
    [
        (1, 40, None),
        (3, 48, None),
        (17, 40, None),
        (33, 48, None),
        (5, 48, (16, 1)),
        (6, 40, (64, 2)),
        (9, 64, (16, 4)),
    ],
)
def test_ssm_step_matches_reference_and_updates_state_in_place(dtype, rows, dim, launch):
    """The SSM step with its conv at 1 to 33 rows, channel counts that do and do not fill whole channel
    blocks, and several (channels, warps) program shapes: the output, the SSM state rows and the
    shifted conv windows match the reference; slots no row uses are untouched; rerun from the same state,
    it gives the same bits."""
    skip_interpreted_bf16(dtype)
    gen = torch.Generator().manual_seed(60 + rows)
    rank, n, width, slots = 7, 16, 4, rows + 3
    conv = _conv_inputs(gen, rows, dim, width, slots, dtype)
    x = conv.pop("x")
    idx = conv.pop("state_indices")
    weights = {
        **ssm_step_weights(gen, dim, rank, n, dtype),
        "eps": 1e-6,
        "state_indices": idx,
        "z": torch.randn(rows, dim, generator=gen).to(DEV).to(dtype),
        "x": x,
        "xproj": torch.randn(rows, rank + 2 * n, generator=gen).to(DEV).to(dtype),
    }
    ssm_pool = torch.randn(slots, dim, n, generator=gen).to(DEV)
    start = (ssm_pool.clone(), conv["conv_state"].clone())
    ssm_ref, conv_ref = ssm_pool.clone(), conv["conv_state"].clone()
    expect = ref.mamba_decode_ssm_ref(ssm_state=ssm_ref, **{**conv, "conv_state": conv_ref}, **weights)
    got = tk.mamba_decode_ssm(ssm_state=ssm_pool, launch=launch, **conv, **weights)
    assert rel(got, expect) <= tol(dtype)
    assert rel(ssm_pool, ssm_ref) <= tol(dtype)
    assert torch.equal(conv["conv_state"], conv_ref)
    unused = torch.ones(slots, dtype=torch.bool, device=DEV)
    unused[idx] = False
    assert torch.equal(ssm_pool[unused], start[0][unused])
    assert torch.equal(conv["conv_state"][unused], start[1][unused])
    again_ssm, again_conv = start[0].clone(), start[1].clone()
    again = tk.mamba_decode_ssm(
        ssm_state=again_ssm, launch=launch, **{**conv, "conv_state": again_conv}, **weights
    )
    assert torch.equal(again, got)
    assert torch.equal(again_ssm, ssm_pool)
    assert torch.equal(again_conv, conv["conv_state"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("rows", "launch"), [(2, None), (7, (32, 2, 1)), (7, (16, 1, 3)), (6, (32, 2, 2)), (5, (64, 2, 4))]
)
def test_ssm_step_in_whole_blocks_and_row_blocks_matches_reference(dtype, rows, launch):
    """Whole channel blocks, dt_rank and d_state powers of two (nothing masked but rows), one row a program
    and programs of several rows (row counts that leave the last block short), a padding row (slot -1): the
    output, the state rows and the conv windows match the reference; the padding row's slot is untouched and
    it outputs zeros."""
    skip_interpreted_bf16(dtype)
    gen = torch.Generator().manual_seed(70 + rows)
    dim, rank, n, width, slots = 128, 16, 16, 4, rows + 3
    conv = _conv_inputs(gen, rows, dim, width, slots, dtype)
    x = conv.pop("x")
    idx = conv.pop("state_indices")
    idx[rows // 2] = -1
    keep = idx >= 0
    weights = {
        **ssm_step_weights(gen, dim, rank, n, dtype),
        "eps": 1e-6,
        "z": torch.randn(rows, dim, generator=gen).to(DEV).to(dtype),
        "xproj": torch.randn(rows, rank + 2 * n, generator=gen).to(DEV).to(dtype),
    }
    pool = torch.randn(slots, dim, n, generator=gen).to(DEV)
    e_pool, e_window = pool.clone(), conv["conv_state"].clone()
    rest = {k: v for k, v in conv.items() if k != "conv_state"}
    y = tk.mamba_decode_ssm(x=x, state_indices=idx, ssm_state=pool, launch=launch, **conv, **weights)
    e_y = ref.mamba_decode_ssm_ref(
        x=x[keep], state_indices=idx[keep], ssm_state=e_pool, conv_state=e_window, **rest,
        **{**weights, "z": weights["z"][keep], "xproj": weights["xproj"][keep]},
    )  # fmt: skip
    assert not y[rows // 2].any()
    assert rel(y[keep], e_y) <= tol(dtype)
    assert rel(pool, e_pool) <= tol(dtype)
    assert torch.equal(conv["conv_state"], e_window)


@pytest.mark.parametrize("rows", [5, 17])
def test_mamba_step_kernels_skip_rows_with_a_negative_slot(rows):
    """A padding row (slot -1) leaves every pool slot as it was and outputs zeros from the SSM step; the
    other rows get the reference's results, in the conv + x_proj launch and in the SSM step."""
    gen = torch.Generator().manual_seed(90 + rows)
    dim, rank, n, width, slots = 48, 7, 16, 4, rows + 3
    conv = _conv_inputs(gen, rows, dim, width, slots, torch.float32)
    x = conv.pop("x")
    idx = conv.pop("state_indices")
    idx[2] = -1
    keep = torch.arange(rows, device=DEV) != 2
    xw = (torch.randn(rank + 2 * n, dim, generator=gen) * 0.2).to(DEV)
    xp = tk.mamba_conv_xproj(x=x, xproj_weight=xw, state_indices=idx, **conv)
    e_xp = ref.mamba_conv_xproj_ref(x=x[keep], xproj_weight=xw, state_indices=idx[keep], **conv)
    assert rel(xp[keep], e_xp) <= 1e-5
    weights = {
        **ssm_step_weights(gen, dim, rank, n, torch.float32),
        "eps": 1e-6,
        "z": torch.randn(rows, dim, generator=gen).to(DEV),
    }
    pool = torch.randn(slots, dim, n, generator=gen).to(DEV)
    e_pool, e_window = pool.clone(), conv["conv_state"].clone()
    rest = {k: v for k, v in conv.items() if k != "conv_state"}
    xp[2] = float("nan")  # the skipped row's x_proj output is uninitialised memory: the worst it can hold
    y = tk.mamba_decode_ssm(
        xproj=xp, x=x, state_indices=idx, ssm_state=pool, **conv, **weights
    )  # fmt: skip
    e_y = ref.mamba_decode_ssm_ref(
        xproj=xp[keep], x=x[keep], state_indices=idx[keep], ssm_state=e_pool, conv_state=e_window, **rest,
        **{**weights, "z": weights["z"][keep]},
    )  # fmt: skip
    assert not y[2].any()
    assert rel(y[keep], e_y) <= 1e-5
    assert rel(pool, e_pool) <= 1e-5
    assert torch.equal(conv["conv_state"], e_window)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("splits", [1, 2, 8])
def test_attention_decode_writes_the_new_key_and_value_first(paged, splits):
    gen = torch.Generator().manual_seed(17)
    batch, heads, kv_heads, hd, page = 3, 4, 2, 16, 16
    lens = torch.tensor([1, 9, 37], device=DEV)
    q = torch.randn(batch, heads, hd, generator=gen).to(DEV)
    kn, vn = (torch.randn(batch, kv_heads, hd, generator=gen).to(DEV) for _ in range(2))
    if paged:
        shape = (11, kv_heads, page, hd)
        kw = {"block_table": torch.tensor([[7, 0, 0], [2, 0, 0], [9, 4, 1]], device=DEV)}
    else:
        shape = (4, kv_heads, 40, hd)
        kw = {"slots": torch.tensor([3, 0, 1], device=DEV)}
    k, v = (torch.randn(*shape, generator=gen).to(DEV) for _ in range(2))
    k_ref, v_ref = k.clone(), v.clone()
    expect = ref.attention_decode_ref(q, k_ref, v_ref, lens, 0.25, k_new=kn, v_new=vn, **kw)
    got = tk.attention_decode(
        q=q, k_cache=k, v_cache=v, context_lens=lens, scale=0.25, k_new=kn, v_new=vn, num_splits=splits, **kw
    )
    assert rel(got, expect) <= 1e-5
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)


def test_greedy_advance_takes_the_first_argmax_and_advances_the_buffers():
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, -1.0, 5.0, 7.0]], device=DEV)
    ids = torch.zeros(2, dtype=torch.long, device=DEV)
    pos = torch.tensor([4, 9], device=DEV)
    hist = torch.zeros(3, 2, dtype=torch.long, device=DEV)
    counter = torch.ones(1, dtype=torch.long, device=DEV)
    tk.greedy_advance(logits=logits, ids=ids, positions=pos, history=hist, counter=counter)
    assert ids.tolist() == [1, 3] and pos.tolist() == [5, 10] and counter.tolist() == [2]
    assert hist.tolist() == [[0, 0], [1, 3], [0, 0]]


def test_greedy_advance_over_vocabulary_chunks_takes_the_first_argmax_across_chunks():
    """A vocabulary cut into several chunks a row: ties between chunks go to the lower index, ties inside a
    chunk too; two steps in a row fill history rows 0 and 1 and leave the counters at zero."""
    gen = torch.Generator().manual_seed(5)
    rows, vocab = 5, 9001
    logits = torch.randn(rows, vocab, generator=gen)
    logits[0, [7000, 2500]] = 50.0  # two chunks: 2500 wins
    logits[1, [4100, 4101]] = 50.0  # one chunk: 4100 wins
    logits[2, vocab - 1] = 50.0  # the last logit of a ragged last chunk
    logits = logits.to(DEV)
    ids = torch.zeros(rows, dtype=torch.long, device=DEV)
    pos = torch.arange(rows, device=DEV)
    hist = torch.full((3, rows), -1, dtype=torch.long, device=DEV)
    counter = torch.zeros(1, dtype=torch.long, device=DEV)
    expect = logits.argmax(-1)
    for _ in range(2):
        tk.greedy_advance(logits=logits, ids=ids, positions=pos, history=hist, counter=counter)
    assert expect[:3].tolist() == [2500, 4100, vocab - 1]
    assert torch.equal(ids, expect) and torch.equal(hist[0], expect) and torch.equal(hist[1], expect)
    assert hist[2].tolist() == [-1] * rows and pos.tolist() == [2, 3, 4, 5, 6] and counter.tolist() == [2]
    assert _locks_at_zero()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split_k", [1, 3, 4])
@pytest.mark.parametrize("reduce", ["fixup", "launch"])
@pytest.mark.parametrize("swiglu", [False, True])
def test_linear_splitk_matches_reference_on_ragged_shapes(dtype, split_k, reduce, swiglu):
    """Odd rows, outputs and K not multiples of the blocks; SwiGLU over the weight's two halves."""
    skip_interpreted_bf16(dtype)
    from local_model.kernels.triton_gemm import linear_splitk

    gen = torch.Generator().manual_seed(20 + split_k)
    rows, n, k = 5, 37, 333
    x = torch.randn(rows, k, generator=gen).to(DEV).to(dtype)
    w = (torch.randn(2 * n if swiglu else n, k, generator=gen) * 0.1).to(DEV).to(dtype)
    got = linear_splitk(x=x, weight=w, swiglu=swiglu, split_k=split_k, reduce=reduce, block_n=32, block_k=32)
    expect, _ = ref.norm_linear_ref(x=x, weight=w, swiglu=swiglu)
    assert got.dtype == dtype and got.shape == expect.shape
    assert rel(got, expect) <= tol(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [16, 130])
def test_linear_splitk_writes_into_out_rows_of_a_wider_buffer(dtype, rows):
    """``out`` may be a column slice of a wider buffer (the step's logits); more than 128 rows take
    several row blocks; the default launch configuration."""
    skip_interpreted_bf16(dtype)
    from local_model.kernels.triton_gemm import linear_splitk

    gen = torch.Generator().manual_seed(30 + rows)
    x = torch.randn(rows, 96, generator=gen).to(DEV).to(dtype)
    w = torch.randn(70, 96, generator=gen).to(DEV).to(dtype)
    buf = torch.full((rows, 80), 7.0, device=DEV, dtype=dtype)
    got = linear_splitk(x=x, weight=w, out=buf[:, 3:73], split_k=2)
    assert got.data_ptr() == buf[:, 3:73].data_ptr()
    assert rel(buf[:, 3:73], ref.linear_ref(x=x, weight=w)) <= tol(dtype)
    assert (buf[:, :3] == 7).all() and (buf[:, 73:] == 7).all()


@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("swiglu", [False, True])
def test_linear_splitk_with_row_blocks_smaller_than_the_rows_matches_reference(split_k, swiglu):
    """block_m below the row count: several row blocks share each weight tile (40 rows in blocks of 16,
    the last one ragged), every row's output as the reference's."""
    from local_model.kernels.triton_gemm import SplitKConfig, linear_splitk

    gen = torch.Generator().manual_seed(50 + split_k)
    rows, n, k = 40, 45, 160
    x = torch.randn(rows, k, generator=gen).to(DEV)
    w = (torch.randn(2 * n if swiglu else n, k, generator=gen) * 0.1).to(DEV)
    cfg = SplitKConfig(block_m=16, block_n=32, block_k=32, split_k=split_k)
    got = linear_splitk(x=x, weight=w, swiglu=swiglu, config=cfg)
    expect, _ = ref.norm_linear_ref(x=x, weight=w, swiglu=swiglu)
    assert rel(got, expect) <= tol(torch.float32)


def test_linear_splitk_reductions_give_the_same_bits_and_leave_counters_at_zero():
    """Both reductions sum the partials in split order: identical results, run after run; the fixup's
    tile counters are back at zero after each launch (so the next launch, or graph replay, starts clean)."""
    from local_model.kernels import triton_gemm as tg

    gen = torch.Generator().manual_seed(40)
    x = torch.randn(7, 200, generator=gen).to(DEV)
    w = torch.randn(90, 200, generator=gen).to(DEV)
    kw = {"split_k": 4, "block_n": 32, "block_k": 32}
    fix = tg.linear_splitk(x=x, weight=w, reduce="fixup", **kw)
    assert torch.equal(fix, tg.linear_splitk(x=x, weight=w, reduce="launch", **kw))
    assert torch.equal(fix, tg.linear_splitk(x=x, weight=w, reduce="fixup", **kw))
    assert all(int(buf.abs().sum()) == 0 for buf in tg._LOCKS.values())


@pytest.mark.parametrize("rows", [1, 6])
def test_bundle_projections_take_split_k_only_for_listed_weights(monkeypatch, rows):
    """`linear` / `norm_linear` above one row run the split-K GEMM for weights in SPLITK_SHAPES (SwiGLU
    and ``out`` included) and cuBLAS otherwise; one row stays on the GEMV."""
    from local_model.kernels import triton_decode as td
    from local_model.kernels import triton_gemm as tg

    calls = []

    def spy(**kw):  # noqa: ANN003, ANN202
        calls.append(tuple(kw["weight"].shape))
        return tg.linear_splitk(**kw)

    monkeypatch.setattr(td, "linear_splitk", spy)
    monkeypatch.setitem(tg.SPLITK_SHAPES, (90, 67), tg.SplitKConfig(block_n=32, block_k=32, split_k=3))
    gen = torch.Generator().manual_seed(50)
    x, res = (torch.randn(rows, 67, generator=gen).to(DEV) for _ in range(2))
    nw = (torch.rand(67, generator=gen) + 0.5).to(DEV)
    w, w_other = torch.randn(90, 67, generator=gen).to(DEV), torch.randn(80, 67, generator=gen).to(DEV)
    assert rel(tk.linear(x=x, weight=w), ref.linear_ref(x=x, weight=w)) <= 1e-5
    out = torch.empty(rows, 45, device=DEV)
    got, s = tk.norm_linear(x=x, weight=w, norm_weight=nw, residual=res, swiglu=True, out=out, eps=1e-6)
    e_out, e_s = ref.norm_linear_ref(x=x, weight=w, norm_weight=nw, residual=res, swiglu=True, eps=1e-6)
    assert got.data_ptr() == out.data_ptr()
    assert rel(got, e_out) <= 1e-5 and rel(s, e_s) <= 1e-5
    assert rel(tk.linear(x=x, weight=w_other), ref.linear_ref(x=x, weight=w_other)) <= 1e-5
    assert calls == ([] if rows == 1 else [(90, 67), (90, 67)])


@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("fold", [False, True])
def test_decode_step_with_every_projection_on_split_k_matches_the_model_forward(monkeypatch, split_k, fold):
    """The flat decode step at 6 rows with every 2-D weight listed for the split-K GEMM (in_proj, x_proj,
    out_proj, qkv/o, MLP gate/up with SwiGLU and down, lm_head into the logits buffer), split over K or not.
    ``fold`` (`DecodeStep.FOLD_MAX_ROWS` 6, else 0): no RMSNorm launches; the embedding gather and each
    block's last projection (out_proj, o_proj, MLP down, the experts' token sum, which also add the residual)
    leave row sums of squares, the next (in_proj, qkv, MLP gate/up, lm_head, norm weights folded in) scales
    its rows."""
    from local_model.decode import DecodeStep
    from local_model.kernels import triton_bundle
    from local_model.kernels import triton_gemm as tg

    model = _tiny_model(torch.float32)
    for p in model.parameters():
        if p.dim() == 2:
            monkeypatch.setitem(
                tg.SPLITK_SHAPES, tuple(p.shape), tg.SplitKConfig(block_n=16, block_k=32, split_k=split_k)
            )
    monkeypatch.setattr(DecodeStep, "FOLD_MAX_ROWS", 6 if fold else 0)
    batch = 6
    gen = torch.Generator().manual_seed(60)
    prompt = torch.randint(0, 256, (batch, 9), generator=gen).to(DEV)
    ref_cache = model.allocate_cache(batch, 16)
    pool = model.allocate_cache(batch, 16, num_slots=batch)
    slots = torch.arange(batch, device=DEV)
    with torch.inference_mode():
        model(prompt, ref_cache)
        model(prompt, pool.view(slots, torch.zeros(batch, dtype=torch.long)))
        nxt = torch.randint(0, 256, (batch,), generator=gen).to(DEV)
        expect = model(nxt[:, None], ref_cache)[:, 0]
        step = DecodeStep(model, pool, triton_bundle())
        assert (step._folded is not None and step._folds(batch)) is fold
        # never under 5 rows (the MoE's small-batch path) or past FOLD_MAX_ROWS
        assert not (step._folds_apply(4) or step._folds_apply(7))
        got = step.forward(nxt, slots, torch.full((batch,), 9, device=DEV))
    assert _locks_at_zero()
    assert rel(got, expect) <= 1e-5


def test_folded_decode_step_over_paged_attention_pools_matches_the_model_forward(monkeypatch):
    """The engine's layout: the folded step (every projection on split-K, `DecodeStep.FOLD_MAX_ROWS`) with the
    attention layers' K/V in paged pools, each row's blocks scattered through its block table, gives the
    model's cached-forward logits and leaves the new token's K/V in the row's block."""
    from local_model.cache import HybridCache, KVCache
    from local_model.decode import DecodeStep, PagedPool
    from local_model.kernels import triton_bundle
    from local_model.kernels import triton_gemm as tg

    model = _tiny_model(torch.float32)
    for p in model.parameters():
        if p.dim() == 2:
            monkeypatch.setitem(
                tg.SPLITK_SHAPES, tuple(p.shape), tg.SplitKConfig(block_n=16, block_k=32, split_k=2)
            )
    monkeypatch.setattr(DecodeStep, "FOLD_MAX_ROWS", 32)
    batch, plen, bs, blocks_per_row = 7, 9, 4, 4
    gen = torch.Generator().manual_seed(61)
    prompt = torch.randint(0, 256, (batch, plen), generator=gen).to(DEV)
    ref_cache = model.allocate_cache(batch, 16)
    pool = model.allocate_cache(batch, 16, num_slots=batch + 1)
    slots = torch.arange(batch, device=DEV)
    with torch.inference_mode():
        model(prompt, ref_cache)
        model(prompt, pool.view(slots, torch.zeros(batch, dtype=torch.long)))
        # every row's blocks, shuffled over the pool (one spare block for the scratch row)
        perm = torch.randperm(batch * blocks_per_row + 1, generator=gen).to(DEV)
        table = perm[: batch * blocks_per_row].view(batch, blocks_per_row)
        layers = []
        for state in pool.layers:
            if not isinstance(state, KVCache):
                layers.append(state)
                continue
            nkv, hd = state.k.shape[1], state.k.shape[3]
            k = torch.zeros(perm.numel() * bs, nkv, hd, device=DEV)
            v = torch.zeros_like(k)
            for b in range(batch):
                for p in range(plen):
                    at = int(table[b, p // bs]) * bs + p % bs
                    k[at], v[at] = state.k[b, :, p], state.v[b, :, p]
            layers.append(PagedPool(k, v, bs))
        nxt = torch.randint(0, 256, (batch,), generator=gen).to(DEV)
        expect = model(nxt[:, None], ref_cache)[:, 0]
        step = DecodeStep(model, HybridCache(layers, torch.zeros(1, dtype=torch.long)), triton_bundle())
        assert step._folded is not None and step._folds(batch)
        got = step.forward(nxt, slots, torch.full((batch,), plen, device=DEV), table)
    assert _locks_at_zero()
    assert rel(got, expect) <= 1e-5
    kv_layer = next(i for i, x in enumerate(layers) if isinstance(x, PagedPool))
    new_k = ref_cache.layers[kv_layer].k[:, :, plen]
    at = table[:, plen // bs] * bs + plen % bs
    assert rel(layers[kv_layer].k[at], new_k) <= 1e-5


@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("swiglu", [False, True])
def test_split_k_residual_add_then_norm_scaled_projection_match_rmsnorm_then_linear(split_k, swiglu):
    """`linear_residual_splitk` gives residual + x @ w.T and its rows' sums of squares per column block;
    `linear_splitk` with those sums and the norm weight folded into its weight gives linear(RMSNorm(.))."""
    from local_model.kernels.triton_gemm import SplitKConfig, linear_residual_splitk, linear_splitk

    gen = torch.Generator().manual_seed(50 + split_k)
    rows, k, n, n2 = 6, 96, 80, 36
    x = torch.randn(rows, k, generator=gen).to(DEV)
    w = (torch.randn(n, k, generator=gen) * 0.1).to(DEV)
    res = torch.randn(rows, n, generator=gen).to(DEV)
    norm_w = (torch.rand(n, generator=gen) + 0.5).to(DEV)
    w2 = (torch.randn(2 * n2 if swiglu else n2, n, generator=gen) * 0.1).to(DEV)
    cfg = SplitKConfig(block_n=32, block_k=32, split_k=split_k)
    s, ssq = linear_residual_splitk(x=x, weight=w, residual=res, config=cfg)
    s_ref = x @ w.T + res
    assert rel(s, s_ref) <= 1e-6 and ssq.shape == (3, rows)
    assert rel(ssq.sum(0), (s_ref * s_ref).sum(1)) <= 1e-6
    got = linear_splitk(x=s, weight=w2 * norm_w, swiglu=swiglu, config=cfg, norm_ssq=ssq, eps=1e-6)
    h = ref.rms_norm_ref(x=s_ref, weight=norm_w, eps=1e-6)
    assert rel(got, ref.norm_linear_ref(x=h, weight=w2, swiglu=swiglu)[0]) <= 1e-5
    assert _locks_at_zero()


@gpu
@pytest.mark.parametrize("rows", [16, 64])
@pytest.mark.parametrize("split_k", [4, 16])
@pytest.mark.parametrize("swiglu", [False, True])
def test_linear_splitk_at_model_size_is_repeatable_to_the_bit(rows, split_k, swiglu):
    """Programs of a tile finish in any order on the card: the last one must still see every partial and sum
    them in split order (50 launches identical, and identical to the two-pass sum), near cuBLAS in bf16."""
    from local_model.kernels.triton_gemm import linear_splitk

    gen = torch.Generator(device="cuda").manual_seed(70)
    x = torch.randn(rows, 2048, device="cuda", dtype=torch.bfloat16, generator=gen)
    w = torch.randn(2048 if swiglu else 1024, 2048, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    first = linear_splitk(x=x, weight=w, swiglu=swiglu, split_k=split_k)
    assert all(
        torch.equal(first, linear_splitk(x=x, weight=w, swiglu=swiglu, split_k=split_k)) for _ in range(50)
    )
    assert torch.equal(first, linear_splitk(x=x, weight=w, swiglu=swiglu, split_k=split_k, reduce="launch"))
    expect, _ = ref.norm_linear_ref(x=x, weight=w, swiglu=swiglu)
    assert rel(first, expect) <= 1e-2


@gpu
@pytest.mark.parametrize("split_k", [1, 4])
def test_split_k_chain_with_programmatic_dependent_launch_equals_the_plain_chain(split_k):
    """Each launch of a dependent chain starts before the previous one ends and prefetches its weights, eager
    and replayed from a CUDA graph: it must still read the previous output only once that is complete (the
    same bits as launches that wait the usual way), with the fixup counters shared along the chain."""
    from local_model.decode import capture_graph
    from local_model.kernels.pdl import pdl_enabled
    from local_model.kernels.triton_gemm import linear_splitk

    if not pdl_enabled(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs compute capability 9.0+")
    gen = torch.Generator(device="cuda").manual_seed(71)
    ws = [torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16, generator=gen) / 32 for _ in range(24)]
    x0 = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16, generator=gen)

    def chain(pdl: bool) -> torch.Tensor:
        h = x0
        for w in ws:
            h = linear_splitk(x=h, weight=w, split_k=split_k, pdl=pdl, prefetch=pdl)
        return h

    plain = chain(False)
    assert torch.equal(chain(True), plain)
    graph, out = capture_graph(lambda: chain(True))
    for _ in range(20):
        graph.replay()
        assert torch.equal(out, plain)


@gpu
@pytest.mark.parametrize("rows", [1, 16, 64])
def test_mamba_sublayer_at_model_size_in_bf16_repeats_to_the_bit(rows):
    """The 426M model's Mamba sublayer kernels (d_inner 2048, dt_rank 64, d_state 16, bf16 weights, fp32
    state) near the references; the split conv + x_proj identical over 20 launches; the SSM step identical
    with and without programmatic dependent launch, and replayed from a CUDA graph."""
    from local_model.decode import capture_graph

    gen = torch.Generator().manual_seed(80 + rows)
    dim, rank, n, width, slots = 2048, 64, 16, 4, rows + 5
    conv = _conv_inputs(gen, rows, dim, width, slots, torch.bfloat16)
    x = conv.pop("x")
    xw = (torch.randn(rank + 2 * n, dim, generator=gen) * dim**-0.5).to(DEV, torch.bfloat16)
    xp = tk.mamba_conv_xproj(x=x, xproj_weight=xw, **conv)
    assert rel(xp, ref.mamba_conv_xproj_ref(x=x, xproj_weight=xw, **conv)) <= 1e-2
    assert all(torch.equal(tk.mamba_conv_xproj(x=x, xproj_weight=xw, **conv), xp) for _ in range(20))
    idx = conv.pop("state_indices")
    weights = {
        **ssm_step_weights(gen, dim, rank, n, torch.bfloat16),
        "eps": 1e-6,
        "state_indices": idx,
        "z": torch.randn(rows, dim, generator=gen).to(DEV, torch.bfloat16),
        "x": x,
        "xproj": xp,
    }
    start = (torch.randn(slots, dim, n, generator=gen).to(DEV) * 0.1, conv.pop("conv_state"))

    def run(pdl: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ssm, window = start[0].clone(), start[1].clone()
        y = tk.mamba_decode_ssm(ssm_state=ssm, conv_state=window, pdl=pdl, **conv, **weights)
        return y, ssm, window

    got = run()
    e_ssm, e_window = start[0].clone(), start[1].clone()
    expect = ref.mamba_decode_ssm_ref(ssm_state=e_ssm, conv_state=e_window, **conv, **weights)
    assert rel(got[0], expect) <= 1e-2
    assert rel(got[1], e_ssm) <= 1e-2
    assert torch.equal(got[2], e_window)
    assert all(torch.equal(a, b) for a, b in zip(run(pdl=False), got, strict=True))
    ssm, window = start[0].clone(), start[1].clone()
    graph, y = capture_graph(lambda: tk.mamba_decode_ssm(ssm_state=ssm, conv_state=window, **conv, **weights))
    ssm.copy_(start[0])
    window.copy_(start[1])
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, got[0]) and torch.equal(ssm, got[1]) and torch.equal(window, got[2])


def test_programmatic_dependent_launch_is_off_on_the_cpu_and_when_switched_off(monkeypatch):
    """Only CUDA launches of compute capability 9.0+ take PDL, never the interpreter, and HYBRIDGATE_PDL=0
    turns it off; off, a launch gets no `launch_pdl` option at all."""
    from local_model.kernels.pdl import launch_kwargs, pdl_args, pdl_enabled

    assert not pdl_enabled(torch.device("cpu"))
    assert pdl_args(torch.device("cpu")) == {"PDL": False}
    assert launch_kwargs(False) == {}
    if CUDA:
        monkeypatch.setenv("HYBRIDGATE_PDL", "0")
        assert not pdl_enabled(torch.device("cuda"))
