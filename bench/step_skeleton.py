"""The memory schedule of a whole-step persistent decode kernel, without its arithmetic: how fast can one
Triton launch stream the batch-64 decode step's bytes, phase by dependent phase, with a grid barrier between
phases?

A decode "megakernel" (one persistent launch for the whole step) streams the next operation's weights while the
current one finishes. Before writing one, this measures its floor on the card: a persistent grid reads
the 426M config's step bytes in the step's order (in_proj, conv + x_proj with the conv state, the SSM state
read and written, out_proj, the FFN or the MoE's router, gate/up and down, ..., lm_head), one phase at a time,
each program a grid-stride share of the phase's blocks, and

- ``stream``: no barrier (the phases run into each other: the pure read rate of this access pattern),
- ``barrier``: a grid barrier after every phase (each phase pays its ramp and its tail, as separate kernels do),
- ``preload``: the barrier, with each program's first block of the next phase loaded *before* it (weights do
  not depend on the phase before, so a megakernel can request them while it waits): the ramp is hidden;
- ``preload2``: the same with the program's first two blocks of the next phase (most phases of a few MB are
  one or two blocks a program, so the whole phase is in flight across the barrier).

The bytes are read as bf16 and summed (kept live), not multiplied: the arithmetic a real step adds is small at
64 rows, but its latency after each barrier is not, so ``preload`` is a lower bound on the megakernel's step,
not a prediction of it. The SSM state's write is read a second time instead (same bytes). Attention's K/V is
left out (its bytes depend on the context; `bench/local_model_gpu.py`'s step bytes count them).

    python3 bench/step_skeleton.py [--json out.json]

Under ``TRITON_INTERPRET=1`` (``--check``) it runs a small schedule and checks every variant's sum against
torch's: the interpreter runs programs one after another, so its barriers give up after a few spins.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass(frozen=True)
class Phase:
    name: str
    nbytes: int


def step_phases(
    *,
    batch: int = 64,
    hidden: int = 1024,
    layers: int = 8,
    experts: int = 8,
    inter: int = 2816,
    vocab: int = 32000,
    d_state: int = 16,
    d_conv: int = 4,
    attn_period: int = 8,
    attn_offset: int = 4,
    expert_period: int = 2,
    expert_offset: int = 1,
) -> list[Phase]:
    """The bytes a batch-``batch`` decode step of `bench/local_model_gpu.py`'s Jamba config reads, as the
    dependent phases a whole-step kernel would run (bf16 weights, fp32 SSM state, bf16 conv state)."""
    d_inner = 2 * hidden
    dt_rank = -(-hidden // 16)
    heads, kv_heads = hidden // 64, max(1, hidden // 256)
    bf16, fp32 = 2, 4
    out: list[Phase] = []
    for i in range(layers):
        if i % attn_period == attn_offset:
            out.append(Phase(f"{i}.qkv", (heads + 2 * kv_heads) * 64 * hidden * bf16))
            out.append(Phase(f"{i}.attention", 0))
            out.append(Phase(f"{i}.o_proj", hidden * hidden * bf16))
        else:
            conv_state = batch * d_inner * (d_conv - 1) * bf16
            ssm_state = batch * d_inner * d_state * fp32
            out.append(Phase(f"{i}.in_proj", 2 * d_inner * hidden * bf16))
            out.append(Phase(f"{i}.conv_xproj", conv_state + (dt_rank + 2 * d_state) * d_inner * bf16))
            out.append(Phase(f"{i}.ssm", 2 * ssm_state + d_inner * dt_rank * bf16))
            out.append(Phase(f"{i}.out_proj", hidden * d_inner * bf16))
        if i % expert_period == expert_offset:
            out.append(Phase(f"{i}.router", experts * hidden * bf16))
            hit = min(experts, 2 * batch)
            out.append(Phase(f"{i}.moe_gate_up", hit * 2 * inter * hidden * bf16))
            out.append(Phase(f"{i}.moe_down", hit * hidden * inter * bf16))
        else:
            out.append(Phase(f"{i}.gate_up", 2 * inter * hidden * bf16))
            out.append(Phase(f"{i}.down", hidden * inter * bf16))
    out.append(Phase("lm_head", vocab * hidden * bf16))
    return out


@triton.jit
def arrive_and_wait(count_ptr, target, SPIN_MAX: tl.constexpr):
    """Arrive (release) and spin (acquire) until ``target`` programs have arrived in total; SPIN_MAX bounds
    the spin so a grid that is not co-resident (or the interpreter) ends instead of hanging."""
    # every thread's stores before the one arriving thread's release (cumulative at gpu scope)
    tl.debug_barrier()
    tl.atomic_add(count_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < target) & (spins < SPIN_MAX):
        seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
        spins += 1


@triton.jit
def _skeleton(
    w_ptr,
    start_ptr,
    blocks_ptr,
    count_ptr,
    out_ptr,
    n_phases,
    P,
    BLOCK: tl.constexpr,
    BARRIER: tl.constexpr,
    PRELOAD: tl.constexpr,
    SPIN_MAX: tl.constexpr,
):
    """Program pid of P: for each phase, sum blocks pid, pid + P, ... of its BLOCK-element blocks (the phase
    starts at element start[p] and has blocks[p] blocks); BARRIER: a grid barrier after each phase; PRELOAD
    (0, 1 or 2): the program's first PRELOAD blocks of the next phase are loaded before that barrier. Writes
    the program's sum to out[pid]."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    nxt0 = tl.zeros([BLOCK], tl.float32)
    nxt1 = tl.zeros([BLOCK], tl.float32)
    if PRELOAD >= 1:
        nb0 = tl.load(blocks_ptr)
        start0 = tl.load(start_ptr)
        if pid < nb0:
            nxt0 = tl.load(w_ptr + start0 + pid * BLOCK + offs).to(tl.float32)
        if PRELOAD >= 2:  # noqa: SIM102 - a constexpr branch around a runtime one
            if pid + P < nb0:
                nxt1 = tl.load(w_ptr + start0 + (pid + P) * BLOCK + offs).to(tl.float32)
    for p in range(n_phases):
        start = tl.load(start_ptr + p)
        nb = tl.load(blocks_ptr + p)
        first = pid + PRELOAD * P
        if PRELOAD >= 1:
            acc += nxt0  # zeros where this program has no such block of the phase
        if PRELOAD >= 2:
            acc += nxt1
        for b in range(first, nb, P):
            acc += tl.load(w_ptr + start + b * BLOCK + offs).to(tl.float32)  # start is int64
        if PRELOAD >= 1:
            nxt0 = tl.zeros([BLOCK], tl.float32)
            nxt1 = tl.zeros([BLOCK], tl.float32)
            if p + 1 < n_phases:
                nb1 = tl.load(blocks_ptr + p + 1)
                start1 = tl.load(start_ptr + p + 1)
                if pid < nb1:
                    nxt0 = tl.load(w_ptr + start1 + pid * BLOCK + offs).to(tl.float32)
                if PRELOAD >= 2:  # noqa: SIM102 - a constexpr branch around a runtime one
                    if pid + P < nb1:
                        nxt1 = tl.load(w_ptr + start1 + (pid + P) * BLOCK + offs).to(tl.float32)
        if BARRIER:
            arrive_and_wait(count_ptr, (p + 1) * P, SPIN_MAX)
    tl.store(out_ptr + pid, tl.sum(acc))


VARIANTS = {"stream": (False, 0), "barrier": (True, 0), "preload": (True, 1), "preload2": (True, 2)}


class Schedule:
    """The phases laid out back to back in one bf16 buffer, each padded to whole blocks (zeros)."""

    def __init__(self, phases: list[Phase], block: int, device: torch.device) -> None:
        self.phases, self.block = phases, block
        blocks = [-(-ph.nbytes // 2 // block) for ph in phases]
        starts = [0]
        for b in blocks[:-1]:
            starts.append(starts[-1] + b * block)
        total = starts[-1] + blocks[-1] * block
        self.weights = torch.zeros(max(total, block), dtype=torch.bfloat16, device=device)
        for s, ph in zip(starts, phases, strict=True):
            n = ph.nbytes // 2
            if n:
                self.weights[s : s + n].uniform_(-1.0, 1.0)
        self.starts = torch.tensor(starts, dtype=torch.int64, device=device)
        self.blocks = torch.tensor(blocks, dtype=torch.int32, device=device)
        self.count = torch.zeros(1, dtype=torch.int32, device=device)
        self.nbytes = sum(ph.nbytes for ph in phases)

    def _args(self, programs: int, variant: str, out: torch.Tensor, num_warps: int, spin_max: int) -> tuple:
        barrier, preload = VARIANTS[variant]
        args = (self.weights, self.starts, self.blocks, self.count, out, len(self.phases), programs)
        meta = {"BLOCK": self.block, "BARRIER": barrier, "PRELOAD": preload, "SPIN_MAX": spin_max}
        return args, {**meta, "num_warps": num_warps}

    def compile(self, programs: int, variant: str, out: torch.Tensor, num_warps: int, spin_max: int):  # noqa: ANN201
        """The variant's compiled kernel without running it (its ``n_regs`` say how many programs fit an SM:
        a barrier over programs that cannot all be resident would spin until SPIN_MAX)."""
        args, kw = self._args(programs, variant, out, num_warps, spin_max)
        kernel = _skeleton.warmup(*args, grid=(programs,), **kw)
        kernel._init_handles()  # loads the module: n_regs is set then
        return kernel

    def launch(self, programs: int, variant: str, out: torch.Tensor, num_warps: int, spin_max: int) -> None:
        """Run the variant once."""
        args, kw = self._args(programs, variant, out, num_warps, spin_max)
        self.count.zero_()
        _skeleton[(programs,)](*args, **kw)


def check() -> int:
    """Interpreter check: every variant's total equals torch's sum of the schedule's bytes."""
    phases = [Phase("a", 2 * 1000), Phase("b", 0), Phase("c", 2 * 70), Phase("d", 2 * 5000)]
    sched = Schedule(phases, 256, torch.device("cpu"))
    want = sched.weights.float().sum().item()
    ok = True
    for programs in (1, 3, 7):
        for variant in VARIANTS:
            out = torch.zeros(programs, dtype=torch.float32)
            sched.launch(programs, variant, out, num_warps=4, spin_max=2)
            got = out.sum().item()
            good = abs(got - want) <= 1e-3 * max(1.0, abs(want))
            ok &= good
            print(f"programs {programs} {variant}: {got:.4f} vs {want:.4f} {'ok' if good else 'WRONG'}")
    return 0 if ok else 1


def measure(args: argparse.Namespace) -> dict:
    from bench.kernels_gpu import copy_bandwidth
    from local_model.decode import capture_graph

    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    phases = step_phases(batch=args.batch)
    res: dict = {
        "device": torch.cuda.get_device_name(),
        "triton": triton.__version__,
        "phases": len(phases),
        "step_mb": round(sum(ph.nbytes for ph in phases) / 1e6, 1),
        "copy_TBps": copy_bandwidth(),
        "rows": [],
    }
    print(f"{len(phases)} phases, {res['step_mb']} MB a step; copy {res['copy_TBps']} TB/s", flush=True)
    for block in (int(b) for b in args.blocks.split(",")):
        sched = Schedule(phases, block, dev)
        warps = args.warps or max(4, min(16, block // 1024))
        want = sched.weights.float().sum().item()
        for per_sm in (int(p) for p in args.per_sm.split(",")):
            programs = sms * per_sm
            out = torch.zeros(programs, dtype=torch.float32, device=dev)
            for variant in args.variants.split(","):
                row: dict = {"block": block, "programs": programs, "variant": variant}
                try:
                    kernel = sched.compile(programs, variant, out, warps, 1 << 24)
                    row["regs"] = kernel.n_regs
                    fit = 65536 // max(1, kernel.n_regs * warps * 32)
                    if fit < per_sm:  # a barrier over programs that cannot all be resident would only spin
                        row["error"] = f"{kernel.n_regs} registers a thread: {fit} program(s) an SM fit"
                        res["rows"].append(row)
                        print(json.dumps(row), flush=True)
                        continue
                    sched.launch(programs, variant, out, warps, 1 << 24)
                    torch.cuda.synchronize()
                    row["sum_ok"] = abs(out.sum().item() - want) <= 1e-3 * max(1.0, abs(want))
                    g, _ = capture_graph(
                        lambda s=sched, o=out, v=variant, p=programs, w=warps: s.launch(p, v, o, w, 1 << 24)
                    )
                    ms = triton.testing.do_bench(g.replay, warmup=20, rep=200, return_mode="median")
                    row["us"] = round(ms * 1000, 1)
                    row["TBps"] = round(sched.nbytes / (ms * 1e-3) / 1e12, 2)
                    row["copy_share"] = round(row["TBps"] / res["copy_TBps"], 3)
                except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, the rest still run
                    torch.cuda.synchronize()
                    row["error"] = f"{type(exc).__name__}: {exc}"[:200]
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(res, indent=1))
        del sched
        torch.cuda.empty_cache()
    print("\n| block | programs | variant | µs a step | TB/s | share of copy |")
    print("|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['block']} | {r['programs']} | {r['variant']} | {r.get('us', r.get('error'))} | "
              f"{r.get('TBps', '-')} | {r.get('copy_share', '-')} |")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--check", action="store_true", help="interpreter check of the variants' sums (CPU)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--blocks", default="4096,8192,16384", help="elements a program loads at a time")
    ap.add_argument("--per-sm", default="1,2", help="programs an SM")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="which of " + ", ".join(VARIANTS))
    ap.add_argument("--warps", type=int, default=0, help="warps a program (0: a warp per 1,024 elements, 4-16)")
    args = ap.parse_args()
    if args.check:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--check runs under TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        return check()
    res = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
