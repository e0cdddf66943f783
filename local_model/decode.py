"""The model's single-token decode step as flat kernel calls, captured in CUDA graphs per batch bucket.

`DecodeStep` reads a `JambaForCausalLM`'s weights (no copy, except q/k/v and gate/up concatenated into one
projection each) and runs one token per row over a slot pool (`HybridCache.allocate(num_slots=...)`):

    embed -> per layer: [fused residual +] RMSNorm -> mixer step -> fused residual + RMSNorm -> FFN
          -> final fused residual + RMSNorm -> lm_head

with every op taken from a `KernelBundle`, each RMSNorm (+ residual add) fused into the projection after
it (Mamba: norm + in_proj, conv window + x_proj, one dt/B/C-norm + dt_proj + conv shift + selective-state-
update kernel, out_proj; attention: norm + qkv projection, decode attention that first writes the new K/V
at each row's position, o_proj; MLP: norm + gate/up + SwiGLU, down; MoE: norm + router + softmax/top-k,
then the experts; lm_head with the final norm). Inputs are device tensors (token ids, slots, positions): nothing in the step reads a value back
to the host, so the whole step is captured once per batch bucket and replayed. Padding rows of a bucket
point at a scratch slot (the pool's last) that no sequence owns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F

from .cache import HybridCache, KVCache, MambaState
from .kernels import KernelBundle
from .model import Attention, JambaForCausalLM, MambaMixer

LOG2E = math.log2(math.e)


@dataclass
class PagedPool:
    """An attention layer's K/V in the engine's paged layout: ``k``, ``v`` are ``[num_blocks * block_size,
    Hkv, hd]`` and a row's positions are found through its block table (see `local_model.engine.paged`)."""

    k: torch.Tensor
    v: torch.Tensor
    block_size: int


@dataclass
class _MambaWeights:
    mixer: MambaMixer
    conv_w: torch.Tensor
    A: torch.Tensor
    a2: torch.Tensor
    dt_bias: torch.Tensor


_T = TypeVar("_T")


def capture_graph(body: Callable[[], _T]) -> tuple[torch.cuda.CUDAGraph, _T]:  # pragma: no cover - GPU only
    """``body`` recorded in a CUDA graph, and what the recorded call returned (its tensors live in the
    graph's pool and are rewritten by each replay). Two warm-up calls on a side stream first, so kernels
    compile and autotune outside the capture; ``body`` must only touch scratch state then."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()
    return graph, out


def pick_bucket(buckets: tuple[int, ...], batch: int) -> int:
    """The smallest bucket (batch size a step is captured for) that holds ``batch`` rows."""
    for b in buckets:
        if b >= batch:
            return b
    raise ValueError(f"batch {batch} exceeds the largest bucket {buckets[-1]}")


class DecodeStep:
    """One greedy decode step for up to ``max_batch`` rows; `capture` records it per batch bucket."""

    # Steps of more than `triton_decode.MOE_GEMV_MAX_TOKENS` (4) and at most this many rows whose every
    # projection runs the split-K GEMM fold each RMSNorm into its neighbours (`_forward_folded`; 0: never).
    # H100, 426M shape (`bench/local_model_gpu.py --splitk-ab`, ``fold``): +3.5% tok/s at 8 rows, +4.0% at 16,
    # +1.2% at 32, none at 64 (-0.4%, inside the run-to-run spread), where the PDL hand-offs the norms cost
    # are cheap and the fold's epilogue work is not
    FOLD_MAX_ROWS = 32

    def __init__(
        self,
        model: JambaForCausalLM,
        cache: HybridCache,
        kernels: KernelBundle,
        buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
        *,
        scratch_slot: int | None = None,
    ) -> None:
        self.model = model
        self.cache = cache
        self.k = kernels
        self.config = model.config
        first = next(x for x in cache.layers if not isinstance(x, PagedPool))
        num_slots = first.k.shape[0] if isinstance(first, KVCache) else first.conv.shape[0]
        self.scratch_slot = num_slots - 1 if scratch_slot is None else scratch_slot
        self.buckets = tuple(b for b in buckets if b <= num_slots - 1) or (1,)
        self._prep = {}
        for i, layer in enumerate(model.model.layers):
            mixer = layer.mixer
            if isinstance(mixer, MambaMixer):
                A = -torch.exp(mixer.A_log.float())
                self._prep[i] = _MambaWeights(
                    mixer,
                    mixer.conv1d.weight.squeeze(1).contiguous(),
                    A,
                    (A * LOG2E).contiguous(),
                    mixer.dt_proj.bias.float().contiguous(),
                )
            else:
                self._prep[i] = torch.cat([mixer.q_proj.weight, mixer.k_proj.weight, mixer.v_proj.weight], 0)
            if not layer.is_moe:
                ff = layer.feed_forward
                self._prep[("mlp", i)] = torch.cat([ff.gate_proj.weight, ff.up_proj.weight], 0)
        # rows -> whether a step of that many rows folds its norms (`_folds_apply`, asked once per size)
        self._fold_rows: dict[int, bool] = {}
        # the norm-folded copies of the weights, only where a step of some size folds
        fold = kernels.name == "triton" and any(self._folds(r) for r in range(1, self.FOLD_MAX_ROWS + 1))
        self._folded = self._fold_weights() if fold else None
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.static: dict[int, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ the step, eager

    @torch.no_grad()
    def forward(
        self,
        ids: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        block_table: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, vocab] for token ids[b] at position positions[b] of the sequence in slot slots[b]
        (with paged attention pools, row b's KV blocks are ``block_table[b]``); written to ``out`` if given.

        Each RMSNorm (with the residual add of the previous block's output) is done by the kernel of the
        projection that reads it: the mixer's input projection, the MLP's gate/up, the MoE router, lm_head."""
        if self._folded is not None and self._folds(ids.shape[0]):
            return self._forward_folded(ids, slots, positions, block_table, out)
        k, cfg = self.k, self.config
        eps = cfg.rms_norm_eps
        x = self.model.model.embed_tokens(ids)
        f: torch.Tensor | None = None  # the previous layer's FFN output, added to x by the next norm
        for i, layer in enumerate(self.model.model.layers):
            src, res = (x, None) if f is None else (f, x)
            nw = layer.input_layernorm.weight
            state = self.cache.layers[i]
            if isinstance(state, MambaState):
                m, x = self._mamba(i, src, res, nw, state, slots)
            else:
                m, x = self._attention(layer.mixer, i, src, res, nw, state, slots, positions, block_table)
            if layer.is_moe:
                f, x = self._moe(layer, m, eps, residual=x)
            else:
                f, x = self._mlp(layer.feed_forward, i, m, x, layer.pre_ff_layernorm.weight)
        logits, _ = k.norm_linear(
            x=f,
            residual=x,
            norm_weight=self.model.model.final_layernorm.weight,
            eps=eps,
            weight=self.model.lm_head.weight,
            out=out,
        )
        return logits

    # ------------------------------------------------------------------ the step with the norms folded

    def _fold_weights(self) -> dict[object, torch.Tensor]:
        """Each weight that reads a normalised residual stream times its RMSNorm weight along K (rounded to
        the model dtype): the mixers' input projections, the dense MLPs' gate/up and lm_head."""
        out: dict[object, torch.Tensor] = {}

        def fold(w: torch.Tensor, nw: torch.Tensor) -> torch.Tensor:
            return (w.float() * nw.float()[None, :]).to(w.dtype).contiguous()

        for i, layer in enumerate(self.model.model.layers):
            nw = layer.input_layernorm.weight
            w = self._prep[i]
            out[i] = fold(w.mixer.in_proj.weight if isinstance(w, _MambaWeights) else w, nw)
            if not layer.is_moe:
                out[("mlp", i)] = fold(self._prep[("mlp", i)], layer.pre_ff_layernorm.weight)
        out["lm_head"] = fold(self.model.lm_head.weight, self.model.model.final_layernorm.weight)
        return out

    def _folds(self, rows: int) -> bool:
        """`_folds_apply`, remembered per row count (the launch tables are fixed once steps run)."""
        got = self._fold_rows.get(rows)
        if got is None:
            got = self._fold_rows[rows] = self._folds_apply(rows)
        return got

    def _folds_apply(self, rows: int) -> bool:
        """Whether a step of ``rows`` rows folds its norms: more than MOE_GEMV_MAX_TOKENS (the MoE's per-pair
        GEMV path has no residual add) and at most FOLD_MAX_ROWS rows, every projection on the split-K GEMM
        (rows within its range, each weight listed), no Mamba projection bias, MoE layers on SwiGLU experts
        with the fused token sum."""
        from .kernels.triton_decode import MOE_GEMV_MAX_TOKENS
        from .kernels.triton_gemm import splitk_for
        from .kernels.triton_moe import fused_sum_applies

        def listed(w: torch.Tensor) -> bool:
            return splitk_for(rows, *w.shape) is not None

        if not MOE_GEMV_MAX_TOKENS < rows <= self.FOLD_MAX_ROWS:
            return False
        for i, layer in enumerate(self.model.model.layers):
            w = self._prep[i]
            if isinstance(w, _MambaWeights):
                mx = w.mixer
                if mx.in_proj.bias is not None or mx.out_proj.bias is not None:
                    return False
                w_in, w_out = mx.in_proj.weight, mx.out_proj.weight
            else:
                w_in, w_out = w, layer.mixer.o_proj.weight
            if not (listed(w_in) and listed(w_out)):
                return False
            ff = layer.feed_forward
            if layer.is_moe:
                if ff.act is not F.silu or not fused_sum_applies(rows, ff.top_k):
                    return False
            elif ff.act is not F.silu or not (listed(self._prep[("mlp", i)]) and listed(ff.down_proj.weight)):
                return False
        return listed(self.model.lm_head.weight)

    def _forward_folded(
        self,
        ids: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        block_table: torch.Tensor | None,
        out: torch.Tensor | None,
    ) -> torch.Tensor:
        """`forward` without RMSNorm launches: each block's last projection adds its output to the residual
        stream s in its epilogue and leaves each row's partial sums of squares of s; the next projection that
        reads norm(s) runs on s with the norm weight folded into its weight (`_fold_weights`) and scales its
        rows by rsqrt(mean square + eps) in its epilogue. The embedding gather leaves the first sums of
        squares (`embed_with_ssq`); the MoE route normalises s itself."""
        from .kernels.triton_decode import embed_with_ssq
        from .kernels.triton_gemm import linear_residual_splitk, linear_splitk, splitk_for

        eps = self.config.rms_norm_eps
        assert self._folded is not None
        s, ssq = embed_with_ssq(ids=ids, table=self.model.model.embed_tokens.weight)
        rows = s.shape[0]
        for i, layer in enumerate(self.model.model.layers):
            w = self._prep[i]
            state = self.cache.layers[i]
            wf = self._folded[i]
            h = linear_splitk(x=s, weight=wf, config=splitk_for(rows, *wf.shape), norm_ssq=ssq, eps=eps)
            if isinstance(w, _MambaWeights):
                y, w_out = self._mamba_ssm(w, h, state, slots), w.mixer.out_proj.weight
            else:
                mixer = layer.mixer
                y, w_out = self._attend(mixer, h, state, slots, positions, block_table), mixer.o_proj.weight
            ff = layer.feed_forward
            s, ssq = linear_residual_splitk(
                x=y, weight=w_out, residual=s, config=splitk_for(rows, *w_out.shape), ssq=not layer.is_moe
            )
            if layer.is_moe:
                s, ssq = self._moe(layer, s, eps, add_to_stream=True)
            else:
                wf = self._folded[("mlp", i)]
                act = linear_splitk(
                    x=s, weight=wf, swiglu=True, config=splitk_for(rows, *wf.shape), norm_ssq=ssq, eps=eps
                )
                s, ssq = linear_residual_splitk(
                    x=act, weight=ff.down_proj.weight, residual=s, config=splitk_for(rows, *ff.down_proj.weight.shape)
                )  # fmt: skip
        wf = self._folded["lm_head"]
        return linear_splitk(
            x=s, weight=wf, out=out, config=splitk_for(rows, *wf.shape), norm_ssq=ssq, eps=eps
        )

    def _moe(
        self,
        layer: torch.nn.Module,
        x: torch.Tensor,
        eps: float,
        **how: torch.Tensor | bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's MoE block (its norm, route and experts) on x; ``how``: ``residual=`` (every bundle's
        `moe_block`) or ``add_to_stream=True`` (the Triton bundle's, for the folded step)."""
        ff = layer.feed_forward
        return self.k.moe_block(
            x=x,
            norm_weight=layer.pre_ff_layernorm.weight,
            eps=eps,
            router_weight=ff.router.weight,
            gate_up_proj=ff.experts.gate_up_proj,
            down_proj=ff.experts.down_proj,
            top_k=ff.top_k,
            act=ff.act,
            **how,
        )

    def _mamba(
        self,
        i: int,
        src: torch.Tensor,
        res: torch.Tensor | None,
        norm_weight: torch.Tensor,
        state: MambaState,
        slots: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._prep[i]
        mx = w.mixer
        xz, x = self.k.norm_linear(
            x=src, residual=res, norm_weight=norm_weight, eps=self.config.rms_norm_eps, weight=mx.in_proj.weight
        )
        if mx.in_proj.bias is not None:
            xz = xz + mx.in_proj.bias
        y = self._mamba_ssm(w, xz, state, slots)
        return self.k.linear(x=y, weight=mx.out_proj.weight, bias=mx.out_proj.bias), x

    def _mamba_ssm(
        self, w: _MambaWeights, xz: torch.Tensor, state: MambaState, slots: torch.Tensor
    ) -> torch.Tensor:
        """The Mamba mixer between its projections: conv window, x_proj and the selective state update of
        the in_proj output xz; returns y for out_proj."""
        mx = w.mixer
        d = mx.d_inner
        conv = {
            "conv_state": state.conv,
            "conv_weight": w.conv_w,
            "conv_bias": mx.conv1d.bias,
            "activation": mx.activation,
        }
        # x_proj reads the conv of the cached window and the new input; the SSM kernel then shifts the window
        xp = self.k.mamba_conv_xproj(x=xz[:, :d], state_indices=slots, xproj_weight=mx.x_proj.weight, **conv)
        kw = {"a2": w.a2} if self.k.name == "triton" else {}
        y = self.k.mamba_decode_ssm(
            xproj=xp,
            x=xz[:, :d],
            z=xz[:, d:],
            ssm_state=state.ssm,
            state_indices=slots,
            dt_norm_weight=mx.dt_layernorm.weight,
            b_norm_weight=mx.b_layernorm.weight,
            c_norm_weight=mx.c_layernorm.weight,
            eps=mx.dt_layernorm.eps,
            dt_proj_weight=mx.dt_proj.weight,
            dt_bias=w.dt_bias,
            A=w.A,
            D=mx.D,
            **conv,
            **kw,
        )
        return y

    def _attention(
        self,
        attn: Attention,
        i: int,
        src: torch.Tensor,
        res: torch.Tensor | None,
        norm_weight: torch.Tensor,
        kv: KVCache | PagedPool,
        slots: torch.Tensor,
        positions: torch.Tensor,
        block_table: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qkv, x = self.k.norm_linear(
            x=src, residual=res, norm_weight=norm_weight, eps=self.config.rms_norm_eps, weight=self._prep[i]
        )
        o = self._attend(attn, qkv, kv, slots, positions, block_table)
        return self.k.linear(x=o, weight=attn.o_proj.weight), x

    def _attend(
        self,
        attn: Attention,
        qkv: torch.Tensor,
        kv: KVCache | PagedPool,
        slots: torch.Tensor,
        positions: torch.Tensor,
        block_table: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention of the step's q over each row's cached K/V plus the new k, v (written at the row's
        position first), from the fused q/k/v projection; returns [B, heads * head_dim] for o_proj."""
        batch = qkv.shape[0]
        hd, nh, nkv = attn.head_dim, attn.n_heads, attn.n_kv_heads
        q = qkv[:, : nh * hd].view(batch, nh, hd)
        kk = qkv[:, nh * hd : (nh + nkv) * hd].view(batch, nkv, hd)
        vv = qkv[:, (nh + nkv) * hd :].view(batch, nkv, hd)
        # the attention kernel writes the new K/V at each row's position before attending
        if isinstance(kv, PagedPool):
            assert block_table is not None, "paged attention pools need a block table"
            bs = kv.block_size
            cache = {
                "k_cache": kv.k.view(-1, bs, nkv, hd).transpose(1, 2),  # [blocks, Hkv, block_size, hd], no copy
                "v_cache": kv.v.view(-1, bs, nkv, hd).transpose(1, 2),
                "block_table": block_table,
            }
        else:
            cache = {"k_cache": kv.k, "v_cache": kv.v, "slots": slots}
        o = self.k.attention_decode(
            q=q, context_lens=positions + 1, scale=attn.scale, k_new=kk, v_new=vv, **cache
        )
        return o.reshape(batch, nh * hd)

    def _mlp(
        self, mlp: torch.nn.Module, i: int, m: torch.Tensor, x: torch.Tensor, norm_weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        act, x = self.k.norm_linear(
            x=m,
            residual=x,
            norm_weight=norm_weight,
            eps=self.config.rms_norm_eps,
            weight=self._prep[("mlp", i)],
            swiglu=mlp.act is F.silu,
        )
        if mlp.act is not F.silu:
            g, u = act.chunk(2, dim=-1)
            act = mlp.act(g) * u
        return self.k.linear(x=act, weight=mlp.down_proj.weight), x

    # ------------------------------------------------------------------ greedy loop on device buffers

    def _greedy_body(self, bufs: dict[str, torch.Tensor]) -> None:
        """One greedy step that feeds itself: the argmax becomes the next input, positions advance and the
        token is appended to ``history`` at the device-side step counter."""
        self.forward(bufs["ids"], bufs["slots"], bufs["positions"], out=bufs["logits"])
        self.k.greedy_advance(
            logits=bufs["logits"],
            ids=bufs["ids"],
            positions=bufs["positions"],
            history=bufs["history"],
            counter=bufs["counter"],
        )

    def bucket(self, batch: int) -> int:
        return pick_bucket(self.buckets, batch)

    def _buffers(self, bucket: int, max_steps: int) -> dict[str, torch.Tensor]:
        dev = self.model.lm_head.weight.device
        return {
            "ids": torch.zeros(bucket, dtype=torch.long, device=dev),
            "slots": torch.full((bucket,), self.scratch_slot, dtype=torch.long, device=dev),
            "positions": torch.zeros(bucket, dtype=torch.long, device=dev),
            "logits": torch.zeros(
                bucket, self.config.vocab_size, dtype=self.model.lm_head.weight.dtype, device=dev
            ),
            "history": torch.zeros(max_steps, bucket, dtype=torch.long, device=dev),
            "counter": torch.zeros(1, dtype=torch.long, device=dev),
        }

    def capture(self, batch: int, max_steps: int = 4096) -> int:
        """Record the greedy step for ``batch``'s bucket in a CUDA graph (warm-up runs first, on scratch
        slots, so no sequence's state changes). Returns the bucket."""
        bucket = self.bucket(batch)
        if bucket in self.graphs:
            return bucket
        bufs = self._buffers(bucket, max_steps)
        self.graphs[bucket], _ = capture_graph(lambda: self._greedy_body(bufs))
        self.static[bucket] = bufs
        return bucket

    def start(
        self, ids: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, graphs: bool = True
    ) -> int:
        """Load the rows' next input token, slot and position into their bucket's buffers."""
        batch = ids.shape[0]
        bucket = self.capture(batch) if graphs else self.bucket(batch)
        if bucket not in self.static:
            self.static[bucket] = self._buffers(bucket, 4096)
        bufs = self.static[bucket]
        bufs["ids"].zero_()
        bufs["slots"].fill_(self.scratch_slot)
        bufs["positions"].zero_()
        bufs["ids"][:batch] = ids
        bufs["slots"][:batch] = slots
        bufs["positions"][:batch] = positions
        bufs["counter"].zero_()
        return bucket

    def run(self, bucket: int, steps: int, graphs: bool = True) -> torch.Tensor:
        """``steps`` greedy steps from the loaded state; returns history [steps, bucket] (device)."""
        bufs = self.static[bucket]
        for _ in range(steps):
            if graphs:
                self.graphs[bucket].replay()
            else:
                self._greedy_body(bufs)
        return bufs["history"][:steps]
