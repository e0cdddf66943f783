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

`prefetch_weights` is the other half: a small kernel, launched on a side stream of the step, that requests
whole weight tensors of kernels further down the chain into L2 while the chain is busy with kernels that
leave the card's DRAM bandwidth idle (the step's short projections run at ~1 TB/s of its ~3).
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


@triton.jit
def prefetch_l2_normal(ptrs):
    """`prefetch_l2` at the normal eviction priority (LRU among the other lines)."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1]; // dummy $0", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def _prefetch_range(base, n_lines, BLOCK: tl.constexpr, EVICT_LAST: tl.constexpr):
    """This program's share of ``n_lines`` 128-byte lines from byte pointer ``base`` (programs stride by
    BLOCK lines; the last block repeats the last line)."""
    offs = tl.arange(0, BLOCK)
    step = tl.num_programs(0) * BLOCK
    for start in range(tl.program_id(0) * BLOCK, n_lines, step):
        ptrs = base + tl.minimum(start + offs, n_lines - 1).to(tl.int64) * _LINE
        if EVICT_LAST:
            prefetch_l2(ptrs)
        else:
            prefetch_l2_normal(ptrs)


@triton.jit
def _prefetch_weights(
    p0, n0, p1, n1, p2, n2, p3, n3, p4, n4, p5, n5, p6, n6, p7, n7,
    SEGMENTS: tl.constexpr, BLOCK: tl.constexpr, EVICT_LAST: tl.constexpr,
):  # fmt: skip
    """Up to 8 byte ranges (pointer, lines) requested into L2, spread over the grid's programs."""
    _prefetch_range(p0, n0, BLOCK, EVICT_LAST)
    if SEGMENTS > 1:
        _prefetch_range(p1, n1, BLOCK, EVICT_LAST)
    if SEGMENTS > 2:
        _prefetch_range(p2, n2, BLOCK, EVICT_LAST)
    if SEGMENTS > 3:
        _prefetch_range(p3, n3, BLOCK, EVICT_LAST)
    if SEGMENTS > 4:
        _prefetch_range(p4, n4, BLOCK, EVICT_LAST)
    if SEGMENTS > 5:
        _prefetch_range(p5, n5, BLOCK, EVICT_LAST)
    if SEGMENTS > 6:
        _prefetch_range(p6, n6, BLOCK, EVICT_LAST)
    if SEGMENTS > 7:
        _prefetch_range(p7, n7, BLOCK, EVICT_LAST)


MAX_PREFETCH_SEGMENTS = 8
# programs of a prefetch launch: enough SMs issuing that the requests keep up with DRAM, few enough that
# the chain's kernels keep theirs
PREFETCH_PROGRAMS = 16
_PREFETCH_BLOCK = 256


def prefetch_weights(*, tensors: list[torch.Tensor], max_bytes: int, evict_last: bool = True) -> int:
    """Request the first ``max_bytes`` of ``tensors`` (in order; contiguous, each whole until the budget
    runs out) into L2, on the current stream, without waiting for them. Reads and writes nothing the
    caller can see. Returns the bytes requested (0 where there is nothing to do: empty budget, the CPU or
    the interpreter, whose L2 is not ours to fill)."""
    if max_bytes <= 0 or not tensors or tensors[0].device.type != "cuda":
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 0
    args: list[torch.Tensor | int] = []
    left = max_bytes
    for t in tensors[:MAX_PREFETCH_SEGMENTS]:
        if left <= 0:
            break
        if not t.is_contiguous():
            raise ValueError("prefetch_weights: tensors must be contiguous")
        take = min(t.nbytes, left)
        args += [t.reshape(-1).view(torch.uint8), triton.cdiv(take, LINE_BYTES)]
        left -= take
    segments = len(args) // 2
    args += [args[0], 0] * (MAX_PREFETCH_SEGMENTS - segments)
    lines = sum(n for n in args[1::2] if isinstance(n, int))
    grid = (max(1, min(PREFETCH_PROGRAMS, triton.cdiv(lines, _PREFETCH_BLOCK))),)
    _prefetch_weights[grid](
        *args, SEGMENTS=segments, BLOCK=_PREFETCH_BLOCK, EVICT_LAST=evict_last, num_warps=4
    )
    return max_bytes - left


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
    "prefetch_l2_normal",
    "prefetch_rows",
    "prefetch_weights",
]
