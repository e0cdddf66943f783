"""A training-friendly Mamba-1 selective scan (used by `local_model.train` only).

Why this exists: `local_model.model.selective_scan_chunked` solves the recurrence with a log-depth
Hillis-Steele scan that rebuilds ``[B, D, L, N]`` tensors with ``torch.cat`` at every level. That is fine
for a forward pass, but under autograd every level keeps its tensors and the backward materialises zeros +
copies for each ``cat``; on a 2-core CPU it dominated a training step. `selective_scan_ref` loops over
time with several autograd nodes per step, whose backward is slow too.

Here the sequential part (the recurrence and its readout) is a custom `torch.autograd.Function`
(`SelectiveRecurrence`) with a hand-written backward:

* forward: per time step, a few in-place ops on one contiguous ``[B, D, N]`` block (time-major layout,
  cache-resident); the readout ``y_t = C_t . h_t`` is one batched matmul over all steps afterwards;
* backward: the adjoint recurrence ``g_t = C_t dL/dy_t + exp(dt_{t+1} A) g_{t+1}`` run in reverse
  (decays recomputed, not stored), then every input gradient as batched matmuls / reductions.

Discretisation, D skip and SiLU gate stay plain torch, so autograd handles them. `selective_scan_train`
has the signature and the results of `selective_scan_ref` (tested in
``tests/local_model/train/test_scan_train.py``), so it is a drop-in `MambaKernels.selective_scan` for
training; inference keeps the default kernels.
"""

from __future__ import annotations

from typing import Any

import torch

from .kernels.reference import _discretization_dt, _initial_state, _scan_epilogue
from .model import MambaKernels


class SelectiveRecurrence(torch.autograd.Function):
    """The Mamba-1 recurrence with its readout, time-major, with a hand-written backward.

    Inputs (float32): dt, x: ``[T, B, D]`` (x = dt * u); A: ``[D, N]``; Bm, C: ``[T, B, N]``; h0: ``[B, D, N]``.
    Computes ``h_t = exp(dt_t A) * h_{t-1} + x_t Bm_t`` and returns ``(y, h_T)`` with ``y_t = h_t . C_t``
    (``[T, B, D]``) and the final state (``[B, D, N]``, not differentiated).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # fp32 math under autocast
    def forward(  # type: ignore[override]
        ctx: Any,
        dt: torch.Tensor,
        x: torch.Tensor,
        A: torch.Tensor,
        Bm: torch.Tensor,
        C: torch.Tensor,
        h0: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        steps, batch, dim = dt.shape
        n = A.shape[-1]
        hs = dt.new_empty(steps, batch, dim, n)
        h = h0
        for t in range(steps):
            ht = hs[t]
            torch.mul(dt[t, :, :, None], A, out=ht)
            ht.exp_().mul_(h).addcmul_(x[t, :, :, None], Bm[t, :, None, :])
            h = ht
        tb = steps * batch
        y = torch.bmm(hs.view(tb, dim, n), C.reshape(tb, n, 1)).view(steps, batch, dim)
        ctx.save_for_backward(dt, x, A, Bm, C, h0, hs)
        ctx.mark_non_differentiable(hs)
        return y, h.clone()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(  # type: ignore[override]
        ctx: Any, gy: torch.Tensor, _g_last: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        dt, x, A, Bm, C, h0, hs = ctx.saved_tensors
        steps, batch, dim = dt.shape
        n = A.shape[-1]
        tb = steps * batch
        gy = gy.float().contiguous()
        # dL/dC_t = sum_d gy_t[d] h_t[d, :]
        gC = torch.bmm(gy.view(tb, 1, dim), hs.view(tb, dim, n)).view(steps, batch, n)
        # Adjoint recurrence: gh_t = gy_t C_t + exp(dt_{t+1} A) * gh_{t+1}
        gh = torch.empty_like(hs)
        decay = torch.empty_like(h0)
        for t in range(steps - 1, -1, -1):
            g = gh[t]
            torch.mul(gy[t, :, :, None], C[t, :, None, :], out=g)
            if t + 1 < steps:
                torch.mul(dt[t + 1, :, :, None], A, out=decay)
                g.addcmul_(decay.exp_(), gh[t + 1])
        gx = torch.bmm(gh.view(tb, dim, n), Bm.reshape(tb, n, 1)).view(steps, batch, dim)
        gB = torch.bmm(x.reshape(tb, 1, dim), gh.view(tb, dim, n)).view(steps, batch, n)
        g_h0 = torch.exp(dt[0, :, :, None] * A) * gh[0] if steps else torch.zeros_like(h0)
        # dL/d(dt_t A) = gh_t * h_{t-1} * exp(dt_t A), computed in place in gh.
        if steps:
            gh[1:].mul_(hs[:-1])
            gh[0].mul_(h0)
        buf = hs  # hs is no longer needed: reuse its memory for the decays and products.
        torch.mul(dt[..., None], A, out=buf)
        gs = gh.mul_(buf.exp_())
        gdt = torch.mul(gs, A, out=buf).sum(-1)
        gA = gs.mul_(dt[..., None]).sum((0, 1))
        return gdt, gx, gA, gB, gC, g_h0


def selective_scan_train(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    ssm_state: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract and results as `local_model.model.selective_scan_ref`, with a cheap backward.

    u, delta, z: [B, D, T]; A: [D, N]; B, C: [B, N, T]; returns y: [B, D, T] in u.dtype.
    """
    batch, dim, _ = u.shape
    dt = _discretization_dt(delta, delta_bias, delta_softplus, seq_lens)  # [B, D, T] fp32
    dt_t = dt.permute(2, 0, 1).contiguous()  # time-major [T, B, D]
    x_t = (dt * u.float()).permute(2, 0, 1).contiguous()
    h0, rows = _initial_state(ssm_state, state_indices, batch, dim, A.shape[-1], u)
    y, h_last = SelectiveRecurrence.apply(
        dt_t,
        x_t,
        A.float(),
        B.float().permute(2, 0, 1).contiguous(),
        C.float().permute(2, 0, 1).contiguous(),
        h0,
    )
    if ssm_state is not None:
        ssm_state[rows] = h_last.detach().to(ssm_state.dtype)  # type: ignore[index]
    return _scan_epilogue(y.permute(1, 2, 0), u, D, z)


TRAIN_KERNELS = MambaKernels(selective_scan=selective_scan_train)
"""The model's default kernels with the training scan swapped in (see `JambaForCausalLM.set_kernels`)."""
