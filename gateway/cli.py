"""The `hybridgate` command: serve, migrate, prune, keys, and the router / local-model / bench tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    try:
        return load_settings(getattr(args, "config", None), **overrides)
    except ConfigError as exc:
        print(f"hybridgate: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@contextlib.contextmanager
def _database_errors(s: Settings, doing: str) -> Iterator[None]:
    """A command's database failure (unreachable, wrong name, unwritable SQLite folder, unmigrated) as
    one line naming the URL without its password, exit status 1, instead of the driver's traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.preflight import db_failure

    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        print(f"hybridgate: {doing}: {db_failure(s.database_url, exc)}", file=sys.stderr)
        raise SystemExit(1) from None


def _command_engine(s: Settings) -> AsyncEngine:
    """The log database's engine for a command (keys, prune): opening a connection gives up after
    migrate's bound (requestlog.urls.connect_timeout_args), not the driver's 60 s or more."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from requestlog.urls import connect_timeout_args

    return create_async_engine(s.database_url, connect_args=connect_timeout_args(s.database_url))


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.preflight import redact
    from requestlog.migrate import upgrade

    s = _settings(args)
    with _database_errors(s, "migrate"):
        upgrade(s.database_url)
    print(f"database at head: {redact(s.database_url)}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete logged requests older than --days (or log.retention_days), with attempts and feedback."""
    from datetime import UTC, datetime

    from requestlog.retention import cutoff, prune

    s = _settings(args)
    days = args.days if args.days is not None else s.log.retention_days
    if days is None or days <= 0:
        print("hybridgate: give --days N (> 0) or set log.retention_days", file=sys.stderr)
        return 2

    async def run() -> dict[str, int]:
        engine = _command_engine(s)
        try:
            return (await prune(engine, cutoff(datetime.now(UTC), days))).as_dict()
        finally:
            await engine.dispose()

    with _database_errors(s, "prune"):
        deleted = asyncio.run(run())
    print(json.dumps({"older_than_days": days, "deleted": deleted}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    s = _settings(args, **overrides)
    if args.migrate:
        from requestlog.migrate import upgrade

        with _database_errors(s, "serve --migrate"):
            upgrade(s.database_url)
    from gateway.preflight import check_serve, hand_to_workers, start_warnings

    try:
        checks = check_serve(s)
    except ConfigError as exc:
        print(f"hybridgate: {exc}", file=sys.stderr)
        return 2
    for warning in checks.warnings:
        print(f"hybridgate: warning: {warning}", file=sys.stderr)
    hand_to_workers(checks)  # the app's startup (in every worker) checks and warns no second time
    if s.workers > 1:  # said here once, not by each worker (one worker's app says them as it starts)
        for warning in start_warnings(s):
            print(f"hybridgate: warning: {warning}", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # workers > 1 re-import the app in each process: pass everything through the environment.
    if args.config:
        os.environ["HYBRIDGATE_CONFIG"] = args.config
    for k, v in overrides.items():
        os.environ[f"HYBRIDGATE_{k.upper()}"] = str(v)
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from gateway.http_edge import EdgeConfig, fit_open_file_limit

    config = EdgeConfig(
        "gateway.app:app_from_env",
        limits=fit_open_file_limit(s.http),
        factory=True,
        host=s.host,
        port=s.port,
        workers=s.workers,
        loop="uvloop",
        access_log=False,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    if config.workers > 1:
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
        if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
            return STARTUP_FAILURE  # a worker could not start (app_from_env said why); uvicorn stopped the rest
    else:
        # uvicorn stops the same way on SIGINT (Ctrl-C) and SIGTERM, and then raises the signal again
        # under the handler it found, for the process to end as that signal says. SIGTERM's is the
        # default action: the process ends there. SIGINT's was Python's KeyboardInterrupt: a traceback,
        # then the interpreter's whole teardown, in which native modules the local model loaded (triton's
        # nanobind bindings) report dozens of leaked objects. With the default action for both, Ctrl-C
        # ends `serve` as `kill` does, after the same orderly shutdown (the app's lifespan has ended).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        server.run()
        if not server.started:
            return STARTUP_FAILURE
    return 0


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration_s(text: str) -> int | None:
    """``--expires-in``: whole seconds, or a count with one unit as LiteLLM's ``duration`` takes it
    (``90s``, ``30m``, ``12h``, ``7d``, ``2w``); None when it is neither."""
    import re

    m = re.fullmatch(r"([0-9]+)([smhdw]?)", text.strip().lower())
    return int(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"] if m else None


async def _with_keys(s: Settings, fn: Any) -> Any:
    from gateway.keys import KeyStore

    engine = _command_engine(s)
    # with Redis, a revocation from the CLI reaches running gateways at once, as one from the admin API
    from gateway.app import key_change_events

    notifier = key_change_events(s)
    try:
        return await fn(KeyStore(engine, notifier=notifier))
    finally:
        await engine.dispose()
        if notifier is not None:
            await notifier.client.aclose()


def cmd_keys(args: argparse.Namespace) -> int:
    s = _settings(args)
    with _database_errors(s, f"keys {args.keys_cmd}"):
        return _keys(args, s)


def _keys(args: argparse.Namespace, s: Settings) -> int:
    if args.keys_cmd == "create":
        from pydantic import ValidationError

        from gateway.admin_api import KeyCreate

        limits: dict[str, Any] = {}
        if args.models:
            limits["allowed_models"] = [m.strip() for m in args.models.split(",") if m.strip()]
        for f in ("budget_usd", "budget_period", "rpm_limit", "tpm_limit", "max_concurrency", "user", "team"):
            v = getattr(args, f)
            if v is not None:
                limits[f] = v
        if args.expires_at is not None:
            limits["expires_at"] = args.expires_at
        if args.expires_in is not None:
            limits["expires_in_s"] = _duration_s(args.expires_in)
            if limits["expires_in_s"] is None:
                print(f"invalid expires_in: {args.expires_in!r} is not a duration such as 3600, 90m, 12h or 7d",
                      file=sys.stderr)
                return 2
        try:  # the admin API's own checks: argparse's float() takes "nan", and no type refuses -3
            req = KeyCreate.model_validate({"name": args.name, **limits})
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            print(f"invalid {'.'.join(str(p) for p in err['loc'])}: {err['msg']}", file=sys.stderr)
            return 2
        limits = req.stored(exclude={"name"}, exclude_none=True)
        secret, rec = asyncio.run(_with_keys(s, lambda ks: ks.create(req.name, **limits)))
        print(json.dumps({"key": secret, **rec.public()}, indent=2))
        print("Store this key now: it is not kept and cannot be shown again.", file=sys.stderr)
        return 0
    if args.keys_cmd == "list":
        keys = asyncio.run(_with_keys(s, lambda ks: ks.list()))
        print(json.dumps([k.public() for k in keys], indent=2))
        return 0
    if args.keys_cmd == "revoke":
        ok = asyncio.run(_with_keys(s, lambda ks: ks.revoke(args.key_id)))
        print("revoked" if ok else "no such active key", file=sys.stderr)
        return 0 if ok else 1
    return 2


def _delegate(module: str, func: str) -> Any:
    """Subcommand groups whose tools live with their package (router.offline, local_model, bench)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), func)(args.rest) or 0)

    return run


def cmd_router(args: argparse.Namespace) -> int:
    from router.offline import cli as router_cli

    verbs = {"train": router_cli.train_main, "score": router_cli.score_main, "eval": router_cli.eval_main,
             "train-verifier": router_cli.train_verifier_main}
    if not args.rest or args.rest[0] not in verbs:
        print(f"usage: hybridgate router {{{','.join(verbs)}}} ...", file=sys.stderr)
        return 2
    return int(verbs[args.rest[0]](args.rest[1:]) or 0)


def cmd_bench(args: argparse.Namespace) -> int:
    """`hybridgate bench NAME [args]` runs bench/NAME.py (dashes or underscores) with this Python."""
    import subprocess
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    scripts = sorted(p.stem for p in bench_dir.glob("*.py")) if bench_dir.is_dir() else []
    if not args.rest or args.rest[0].replace("-", "_") not in scripts:
        print(f"usage: hybridgate bench {{{','.join(s.replace('_', '-') for s in scripts)}}} [args]",
              file=sys.stderr)
        return 2
    script = bench_dir / f"{args.rest[0].replace('-', '_')}.py"
    return subprocess.call([sys.executable, str(script), *args.rest[1:]], cwd=bench_dir.parent)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridgate", description="OpenAI-compatible LLM gateway")
    p.add_argument("--config", default=None, help="YAML config file (default: $HYBRIDGATE_CONFIG or ./hybridgate.yaml)")
    sub = p.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("serve", help="run the gateway")
    sp.add_argument("--host", default=None)
    sp.add_argument("--port", type=int, default=None)
    sp.add_argument("--workers", type=int, default=None)
    sp.add_argument("--migrate", action="store_true", help="upgrade the database before serving")
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("migrate", help="upgrade the log database to the latest schema")
    sp.set_defaults(fn=cmd_migrate)

    sp = sub.add_parser("prune", help="delete logged requests older than the retention period")
    sp.add_argument("--days", type=float, default=None, help="default: log.retention_days")
    sp.set_defaults(fn=cmd_prune)

    kp = sub.add_parser("keys", help="gateway API keys")
    ksub = kp.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create")
    kc.add_argument("name")
    kc.add_argument("--models", help="comma-separated allowed models")
    kc.add_argument("--budget-usd", dest="budget_usd", type=float)
    kc.add_argument("--budget-period", dest="budget_period", choices=["day", "week", "month", "total"])
    kc.add_argument("--rpm", dest="rpm_limit", type=int)
    kc.add_argument("--tpm", dest="tpm_limit", type=int)
    kc.add_argument("--max-concurrency", dest="max_concurrency", type=int)
    kc.add_argument("--user")
    kc.add_argument("--team")
    expiry = kc.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", dest="expires_in", metavar="DURATION",
                        help="refuse the key after this long: seconds, or 30m, 12h, 7d, 2w")
    expiry.add_argument("--expires-at", dest="expires_at", metavar="TIMESTAMP",
                        help="refuse the key from this RFC 3339 time on, with its offset: 2027-01-31T18:00:00Z")
    ksub.add_parser("list")
    kr = ksub.add_parser("revoke")
    kr.add_argument("key_id")
    kp.set_defaults(fn=cmd_keys)

    rp = sub.add_parser("router", help="train / score / eval the learned router, train a cascade's verifier",
                        description="hybridgate router VERB --help: that verb's options")
    rp.add_argument("rest", nargs=argparse.REMAINDER, metavar="{train,score,eval,train-verifier} ...")
    rp.set_defaults(fn=cmd_router)

    from gateway import demo_traffic

    dp = sub.add_parser("demo-traffic", help="fake providers + a mixed workload with feedback (console demo data)")
    demo_traffic.add_arguments(dp)
    dp.set_defaults(fn=demo_traffic.run_cli)

    bp = sub.add_parser("bench", help="run a benchmark script from bench/ (a source checkout)",
                        description="hybridgate bench NAME [args] runs bench/NAME.py; without NAME: the list")
    bp.add_argument("rest", nargs=argparse.REMAINDER, metavar="NAME [args]")
    bp.set_defaults(fn=cmd_bench)

    for name, module, func, help_ in [
        ("local-model", "local_model.cli", "main", "serve / train the local hybrid model"),
    ]:
        sp = sub.add_parser(name, help=help_, description="hybridgate local-model VERB --help: that verb's options")
        sp.add_argument("rest", nargs=argparse.REMAINDER, metavar="{serve,train} ...")
        sp.set_defaults(fn=_delegate(module, func))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
