"""The command line: ``python -m backends.fake_provider --port 9001 [--reply-mode lorem] …``.

Prints ``FAKE_PROVIDER_LISTENING http://host:port`` once it serves (`FakeProviderProcess` waits
for that line), and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence

from backends.fake_provider.config import FakeProviderConfig
from backends.fake_provider.server import FakeProvider

__all__ = ["main"]


def _parse_models(items: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, ctx = item.partition("=")
        out[name] = int(ctx) if ctx else 8192
    return out


async def _serve(args: argparse.Namespace) -> None:
    cfg = FakeProviderConfig(
        default_context_window=args.default_context_window,
        strict_models=args.strict_models,
        reply_mode=args.reply_mode,
        reply_tokens=args.reply_tokens,
        embedding_dim=args.embedding_dim,
        api_key=args.api_key,
    )
    if args.reply_text is not None:
        cfg.reply_text = args.reply_text
    if args.model:
        cfg.models = _parse_models(args.model)
    fp = FakeProvider(args.host, args.port, config=cfg)
    await fp.start()
    if args.fault:
        fp.set_faults(args.fault)
    print(f"FAKE_PROVIDER_LISTENING {fp.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fp.stop()


def main(argv: Sequence[str] | None = None) -> None:
    from backends import fake_provider as package  # its docstring's first paragraph is the description

    p = argparse.ArgumentParser(
        prog="python -m backends.fake_provider", description=(package.__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001, help="0 = any free port (printed on stdout)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME[=CONTEXT]",
        help="served model and its context window (repeatable); default fake-model=8192, fake-small=512",
    )
    p.add_argument("--default-context-window", type=int, default=8192)
    p.add_argument("--strict-models", action="store_true", help="404 for models not given with --model")
    p.add_argument("--reply-mode", choices=["echo", "fixed", "lorem"], default="echo")
    p.add_argument("--reply-text", default=None)
    p.add_argument("--reply-tokens", type=int, default=16)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--api-key", default=None)
    p.add_argument("--fault", default=None, help="server-wide default fault spec, e.g. 'latency:20'")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep the CLI usable without it
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))
