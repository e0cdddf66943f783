"""`hybridgate local-model ...`: serve the local hybrid model (and train it, when `local_model.train` exists).

hybridgate local-model serve --checkpoint DIR|shipped [--host 127.0.0.1] [--port 8000] [--device cpu]
                             [--dtype float32] [--model-name NAME] [--memory-mb 256] [--max-num-seqs 64]
                             [--max-queue 256] [--prefill-chunk 256] [--threads N] [--no-prefix-cache]
hybridgate local-model train ...   (delegates to local_model.train.main(argv))
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

DTYPES = ("float32", "bfloat16", "float16", "float64")


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hybridgate local-model serve", description="OpenAI-compatible local model server"
    )
    p.add_argument("--checkpoint", required=True, help='checkpoint directory, or "shipped"')
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument(
        "--model-name", default=None, help="name served in /v1/models (default: checkpoint dir name)"
    )
    p.add_argument("--memory-mb", type=float, default=256.0, help="budget for Mamba slots + KV blocks")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--prefill-chunk", type=int, default=256)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    p.add_argument("--no-prefix-cache", action="store_true")
    p.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="run decode steps eagerly instead of replaying one CUDA graph per batch bucket (CUDA only)",
    )
    p.add_argument(
        "--decode-step",
        choices=["auto", "on", "off"],
        default="auto",
        help="decode steps per batch bucket (CUDA graphs on CUDA); auto: on CUDA (Jamba with the Triton "
        "kernels, the Mamba-2 families), on: also on the CPU, eagerly (see EngineConfig.decode_step)",
    )
    p.add_argument("--log-level", default="info")
    return p


def serve(argv: list[str]) -> int:
    args = _serve_parser().parse_args(argv)
    import torch
    import uvicorn

    from .device import device_problem
    from .engine import Engine, EngineConfig
    from .engine.checkpoint import resolve_checkpoint
    from .server import create_app

    try:
        path = resolve_checkpoint(args.checkpoint)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = device_problem(args.device)
    if problem is not None:
        print(f"error: --device {args.device}: {problem}", file=sys.stderr)
        return 2
    cfg = EngineConfig(
        memory_budget_mb=args.memory_mb,
        max_num_seqs=args.max_num_seqs,
        max_queue=args.max_queue,
        prefill_chunk_tokens=args.prefill_chunk,
        max_model_len=args.max_model_len,
        num_threads=args.threads,
        prefix_caching=not args.no_prefix_cache,
        cuda_graphs=not args.no_cuda_graphs,
        decode_step={"auto": None, "on": True, "off": False}[args.decode_step],
    )
    engine = Engine.from_checkpoint(
        path,
        cfg,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        model_name=args.model_name or path.name,
    )
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve": serve}
    if importlib.util.find_spec("local_model.train") is not None:
        commands["train"] = lambda rest: int(importlib.import_module("local_model.train").main(rest) or 0)
    if not argv or argv[0] not in commands or argv[0] in ("-h", "--help"):
        print(f"usage: hybridgate local-model {{{','.join(commands)}}} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(commands[argv[0]](argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
