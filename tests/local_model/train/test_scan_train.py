"""The training scan must equal the model's reference scan (values, final state and gradients)."""

from __future__ import annotations

import pytest
import torch

from local_model.model import selective_scan_chunked, selective_scan_ref
from local_model.scan_train import selective_scan_train


def _inputs(batch: int = 2, dim: int = 6, n: int = 4, steps: int = 13, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, dim, steps), (batch, dim, steps), (dim, n), (batch, n, steps), (batch, n, steps), (dim,),
              (batch, dim, steps), (dim,)]  # fmt: skip
    ts = [torch.randn(*s, generator=g, dtype=torch.float32) for s in shapes]
    ts[2] = -torch.rand(dim, n, generator=g, dtype=torch.float32) * 3 - 0.1  # A < 0
    return [t.requires_grad_() for t in ts]


def _run(fn, ins: list[torch.Tensor], **kw) -> tuple[torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001
    for t in ins:
        t.grad = None
    u, delta, A, B, C, D, z, bias = ins
    y = fn(u, delta, A, B, C, D, z, bias, True, **kw)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * weights).sum().backward()
    return y.detach(), [t.grad.clone() for t in ins]


@pytest.mark.parametrize("steps", [1, 13, 64])
def test_matches_reference_values_and_gradients(steps: int) -> None:
    ins = _inputs(steps=steps)
    y_ref, g_ref = _run(selective_scan_ref, ins)
    y, g = _run(selective_scan_train, ins)
    # Both compute in float32; only the summation order differs.
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_matches_chunked_in_float32() -> None:
    ins = _inputs(steps=100, dim=16, n=8)
    y_ref, g_ref = _run(selective_scan_chunked, ins)
    y, g = _run(selective_scan_train, ins)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_state_pool_and_seq_lens_like_reference() -> None:
    """With a state pool, slots and right-padded rows it writes the same final states as the reference."""
    u, delta, A, B, C, D, z, bias = (t.detach() for t in _inputs(batch=2, steps=9))
    pool = torch.randn(4, u.shape[1], A.shape[1])
    slots, seq_lens = torch.tensor([3, 1]), torch.tensor([9, 5])
    outs = []
    for fn in (selective_scan_ref, selective_scan_train):
        state = pool.clone()
        y = fn(u, delta, A, B, C, D, z, bias, True, state, slots, seq_lens)
        outs.append((y, state))
    (y_ref, s_ref), (y, s) = outs
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[0], y_ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[1, :, :5], y_ref[1, :, :5], rtol=1e-5, atol=1e-5)
