"""Programmatic dependent launch (PDL) and L2 prefetch for the decode step's chain of small kernels.

At a few dozen rows a decode step is ~100 kernels that each read a few MB of weights: each pays a launch,
a ramp while its first loads are in flight and a tail while its last programs drain. With PDL (Hopper+), a
kernel launched with ``launch_pdl=True`` may start while the kernel before it in the stream is still
running: its programs first request their weight slabs into L2 (weights are never written by the step, so
this needs no ordering), then wait at `gdc_wait` until the previous kernel has completed and its writes
are visible, and only then read activations or write anything. `pdl_begin` also lets the *next* kernel
launch as soon as every program of this one is running.

Rules for a kernel that takes ``PDL``: before `pdl_begin`, touch only weights (prefetch or load); after it,
everything else. Launched without PDL (``launch_pdl`` off, or another kernel in between) the wait returns
at once, so the same binary is correct either way. Under the CPU interpreter ``PDL`` is False and the
prefetch is skipped (both are PTX).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# Rows from which a launch that states its rows takes PDL: a chain of the decode step's projections
# (`bench/kernels_gpu.py --pdl`, H100) ran 5.9 µs a projection with PDL and the weight prefetch against 6.9
# without at 64 rows, but 7.7 against 6.5 at 16 rows (one row: not measured).
PDL_MIN_ROWS = 32
# bytes per L2 line the prefetch requests
LINE_BYTES = 128
_LINE = tl.constexpr(LINE_BYTES)


def pdl_enabled(device: torch.device, rows: int | None = None) -> bool:
    """PDL for kernels launched on ``device``: CUDA with compute capability 9.0 or newer, not the Triton
    interpreter, not switched off by ``HYBRIDGATE_PDL=0``, and (when the launch says how many rows it
    serves) from PDL_MIN_ROWS rows."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    if os.environ.get("HYBRIDGATE_PDL", "1") == "0" or (rows is not None and rows < PDL_MIN_ROWS):
        return False
    return _hopper_or_newer(device.index if device.index is not None else torch.cuda.current_device())


def pdl_choice(device: torch.device, requested: bool | None, rows: int | None = None) -> bool:
    """A launch's PDL: the caller's ``requested`` choice where PDL is available at all, else (None) the
    default `pdl_enabled` for this many rows."""
    if requested is None:
        return pdl_enabled(device, rows)
    return requested and pdl_enabled(device)


@functools.cache
def _hopper_or_newer(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def launch_kwargs(enabled: bool) -> dict[str, bool]:
    """The launch option that turns PDL on (nothing when off, so the interpreter never sees it)."""
    return {"launch_pdl": True} if enabled else {}


def pdl_args(device: torch.device, rows: int | None = None) -> dict[str, bool]:
    """Keyword arguments of a launch whose kernel takes a ``PDL`` constexpr: the constexpr and the launch
    option, both on where `pdl_enabled`."""
    on = pdl_enabled(device, rows)
    return {"PDL": on, **launch_kwargs(on)}


@triton.jit
def pdl_begin(PDL: tl.constexpr):
    """Let the next kernel in the stream launch, then wait until the previous one has completed."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


@triton.jit
def prefetch_l2(ptrs):
    """Request the L2 lines holding ``ptrs`` (any shape; one request per element), without waiting."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2::evict_last [$1]; // dummy $0",
        "=r,l",
        [ptrs],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def prefetch_rows(
    base,
    row0,
    n_rows,
    s_row,
    col0,
    col1,
    up_row,
    ROWS: tl.constexpr,
    LINES: tl.constexpr,
    ELEM_BYTES: tl.constexpr,
    GATE_UP: tl.constexpr = False,
):
    """Prefetch rows [row0, row0 + ROWS) (clamped to n_rows) of a row-major matrix at ``base`` (row stride
    ``s_row`` elements), columns [col0, col1), one request per 128-byte line; LINES >= the lines a row
    covers (extra requests repeat the last line). GATE_UP: the same rows of the block starting at row
    ``up_row`` too (a gate/up weight's up rows)."""
    per_line: tl.constexpr = _LINE // ELEM_BYTES
    r = tl.minimum(row0 + tl.arange(0, ROWS), n_rows - 1)
    c = tl.minimum(col0 + tl.arange(0, LINES) * per_line, col1 - 1)
    ptrs = base + r[:, None].to(tl.int64) * s_row + c[None, :]
    prefetch_l2(ptrs)
    if GATE_UP:
        prefetch_l2(ptrs + up_row * s_row)


def lines_for(cols: int, elem_bytes: int) -> int:
    """LINES for `prefetch_rows` over ``cols`` columns (a power of two)."""
    return triton.next_power_of_2(max(1, triton.cdiv(cols * elem_bytes, LINE_BYTES)))


__all__ = [
    "PDL_MIN_ROWS",
    "launch_kwargs",
    "lines_for",
    "pdl_args",
    "pdl_begin",
    "pdl_choice",
    "pdl_enabled",
    "prefetch_l2",
    "prefetch_rows",
]
