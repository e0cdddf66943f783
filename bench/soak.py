"""Soak: two gateway processes sharing a private Postgres and Redis, restarted under load.

What it does (everything on 127.0.0.1, every process stopped on exit):
  1. starts a private PostgreSQL (initdb + pg_ctl in a temporary directory, its own port; run as the
     ``postgres`` user when started as root) and a private redis-server on its own port, so
     restarting them disturbs no one else; the fake provider; two gateway processes sharing both;
  2. measures saturation (closed loop, ``--sat-seconds``) and then offers ``--load`` (default 0.7) of
     it as an open-loop Poisson stream for ``--minutes``: half streamed, half not, with random
     provider faults injected through the fake provider's magic prompt strings (503, 429, cut
     streams, latency), spread over both gateways;
  3. restarts Postgres at 40% of the run and Redis at 70%;
  4. samples each gateway's RSS every ``--sample-s`` and p99 latency per window;
  5. stops the gateways cleanly, waits for their spools to drain, and counts rows: every request
     that got an answer must have exactly one row (lost = answered without a row; extra = rows of
     requests whose answer never arrived, e.g. cut by a restart);
  6. prints a readable summary (``--json`` for machines).

Usage:
  python bench/soak.py [--minutes 30] [--load 0.7] [--durability batch] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.config import Settings  # noqa: E402
from requestlog.migrate import upgrade  # noqa: E402
from tests.support.harness import GatewayProcess  # noqa: E402

FAULTS = [
    ("", 0.95),
    ("[[fault:503]]", 0.015),
    ("[[fault:429:1]]", 0.01),
    ("[[fault:latency:200]]", 0.015),
    ("[[fault:cut:2]]", 0.01),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------------------------------- services


class PrivatePostgres:
    """A throwaway cluster: initdb into a temp dir, pg_ctl start/restart/stop on its own port."""

    def __init__(self, base: Path) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        self.bin = Path(bins[-1]).parent
        self.dir = base / "pg"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        self.dir.mkdir(parents=True)
        if self.as_postgres:
            shutil.chown(base, "postgres")
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync")
        with (self.dir / "postgresql.conf").open("a") as f:
            f.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                "max_connections = 200\nfsync = on\n"
            )

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        # no pipes: a postmaster started by pg_ctl inherits them and would keep run() waiting forever
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir), "-l", str(self.dir / "server.log"), "-w", "start")

    def restart(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.dir), "-l", str(self.dir / "server.log"), "-m", "fast", "-w", "restart"
        )

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.dir), "-m", "fast", "-w", "stop")


class PrivateRedis:
    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.log = base / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


class FakeProvider:
    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backends.fake_provider",
                "--port",
                str(self.port),
                "--reply-mode",
                "lorem",
                "--reply-tokens",
                "16",
            ],
            cwd=ROOT,
            stdout=(base / "provider.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.base_url}/health", timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError("fake provider did not start")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def gateway_settings(db_url: str, redis_url: str, provider: str, spool: Path, durability: str) -> Settings:
    return Settings(
        **{  # type: ignore[arg-type]
            "database_url": db_url,
            "redis_url": redis_url,
            "redis_prefix": "soak:",
            "log": {"bodies": "hashed", "spool_dir": str(spool), "durability": durability},
            "local_model": {"enabled": False},
            # Random faults are a few percent of requests: the breakers should ride them out
            # (error rate, not a run of five), as they would for a real provider's blips.
            "breaker": {"consecutive_failures": 0, "error_rate": 0.5, "min_requests": 20},
            "deployments": [
                {
                    "name": f"fake-{n}",
                    "model": "fake-model",
                    "upstream_model": "fake-model",
                    "api_base": f"{provider}/v1",
                    "timeout_s": 10,
                    "stream_idle_timeout_s": 5,
                    "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.6},
                }
                for n in ("a", "b")
            ],
        }
    )


# ---------------------------------------------------------------------------------------- load


@dataclass
class Tally:
    answered: dict[str, int] = field(default_factory=dict)  # request id -> HTTP status
    statuses: dict[str, int] = field(default_factory=dict)
    failed: int = 0  # no (complete) answer: connection cut, timeout
    lat: list[tuple[float, float]] = field(default_factory=list)  # (t since start, latency s)
    overload: int = 0


def body(rng: random.Random, i: int) -> dict[str, Any]:
    fault = rng.choices([f for f, _ in FAULTS], weights=[w for _, w in FAULTS])[0]
    return {
        "model": "fake-model",
        "max_tokens": 16,
        "stream": i % 2 == 1,
        "messages": [{"role": "user", "content": f"soak {i} {fault}"}],
    }


async def send(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], tally: Tally, t_start: float
) -> None:
    t0 = time.monotonic()
    try:
        async with session.post(url + "/v1/chat/completions", json=payload) as r:
            data = await r.read()
            rid = r.headers.get("x-request-id")
            complete = (
                not payload["stream"]
                or r.status != 200
                or data.rstrip().endswith(b"[DONE]")
                or b'"error"' in data
            )
            if rid is not None and complete:
                tally.answered[rid] = r.status
                tally.statuses[str(r.status)] = tally.statuses.get(str(r.status), 0) + 1
                tally.lat.append((t0 - t_start, time.monotonic() - t0))
            else:
                tally.failed += 1
    except (aiohttp.ClientError, TimeoutError):
        tally.failed += 1


async def saturation(urls: list[str], seconds: float, conc: int, tally: Tally) -> float:
    """Closed-loop answers per second at ``conc`` in flight (their ids count for the row check too)."""
    rng = random.Random(1)
    t_end = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker(w: int) -> None:
            n = 0
            while time.monotonic() < t_end:
                await send(session, urls[w % len(urls)], body(rng, n), tally, 0.0)
                n += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(conc)))
        return len(tally.answered) / (time.monotonic() - t0)


async def soak(
    urls: list[str],
    rate: float,
    seconds: float,
    events: list[tuple[float, str, Any]],
    tally: Tally,
    samples: list[dict[str, Any]],
    pids: list[int],
    sample_s: float,
    max_inflight: int,
) -> None:
    rng = random.Random(7)
    timeout = aiohttp.ClientTimeout(total=30)
    inflight: set[asyncio.Task[None]] = set()
    t_start = time.monotonic()
    pending_events = sorted(events, key=lambda e: e[0])
    next_sample = 0.0
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        with tqdm(total=int(seconds), unit="s", desc="soak", dynamic_ncols=True) as bar:
            i, t_next, shown = 0, 0.0, 0
            while (now := time.monotonic() - t_start) < seconds:
                while pending_events and pending_events[0][0] <= now:
                    _, what, fn = pending_events.pop(0)
                    tqdm.write(f"[{now:7.1f}s] {what}")
                    # in the background: the offered load goes on while the server is away
                    task = asyncio.create_task(asyncio.to_thread(fn))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                if now >= next_sample:
                    samples.append(
                        {
                            "t": round(now, 1),
                            "rss_mb": [round(rss_mb(p), 1) for p in pids],
                            "inflight": len(inflight),
                        }
                    )
                    next_sample += sample_s
                if now >= t_next:
                    if len(inflight) >= max_inflight:
                        tally.overload += 1
                    else:
                        task = asyncio.create_task(
                            send(session, urls[i % len(urls)], body(rng, i), tally, t_start)
                        )
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                    i += 1
                    t_next += rng.expovariate(rate)
                    continue
                await asyncio.sleep(min(t_next - now, 0.005))
                if int(now) > shown:
                    bar.update(int(now) - shown)
                    shown = int(now)
                    bar.set_postfix(sent=i, ok=tally.statuses.get("200", 0), failed=tally.failed)
            if inflight:
                await asyncio.wait(inflight, timeout=35)


def p99_windows(lat: list[tuple[float, float]], window_s: float) -> list[dict[str, float]]:
    out = []
    if not lat:
        return out
    end = max(t for t, _ in lat)
    t = 0.0
    while t <= end:
        vals = [v for s, v in lat if t <= s < t + window_s]
        if len(vals) >= 20:
            out.append(
                {
                    "t": t,
                    "n": len(vals),
                    "p50_ms": statistics.median(vals) * 1000,
                    "p99_ms": statistics.quantiles(vals, n=100)[98] * 1000,
                }
            )
        t += window_s
    return out


def count_rows(db_url: str, answered: dict[str, int]) -> dict[str, int]:
    import psycopg

    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM requests").fetchall()]
    seen: dict[str, int] = {}
    for rid in ids:
        seen[rid] = seen.get(rid, 0) + 1
    return {
        "rows": len(ids),
        "lost": sum(1 for rid in answered if rid not in seen),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
        "extra_unanswered": sum(1 for rid in seen if rid not in answered),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of the measured saturation to offer")
    ap.add_argument("--sat-seconds", type=float, default=15.0)
    ap.add_argument(
        "--rate", type=float, default=None, help="offer this many req/s instead of --load x saturation"
    )
    ap.add_argument(
        "--max-inflight", type=int, default=256, help="client cap; arrivals beyond it are skipped"
    )
    ap.add_argument("--sat-concurrency", type=int, default=64)
    ap.add_argument("--durability", choices=["off", "batch", "always"], default="batch")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--window-s", type=float, default=30.0, help="p99 window")
    ap.add_argument("--warmup-frac", type=float, default=0.1, help="RSS flatness is judged after this part")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (logs, configs)")
    args = ap.parse_args()
    for tool in ("redis-server",):
        if not shutil.which(tool):
            print(f"{tool} is required", file=sys.stderr)
            return 2

    base = Path(tempfile.mkdtemp(prefix="hg-soak-"))
    pg, redis, provider, gws = None, None, None, []
    seconds = args.minutes * 60
    try:
        pg = PrivatePostgres(base)
        pg.start()
        redis = PrivateRedis(base)
        redis.start()
        provider = FakeProvider(base)
        upgrade(pg.url)
        for n in (1, 2):
            s = gateway_settings(pg.url, redis.url, provider.base_url, base / f"spool{n}", args.durability)
            gws.append(GatewayProcess(s, base, name=f"gw{n}").start())
        urls = [g.base_url for g in gws]
        pids = [g.proc.pid for g in gws if g.proc is not None]

        sat_tally = Tally()
        sat = asyncio.run(saturation(urls, args.sat_seconds, args.sat_concurrency, sat_tally))
        rate = args.rate if args.rate is not None else sat * args.load
        tqdm.write(
            f"saturation ~{sat:.0f} req/s over both gateways; offering {rate:.0f} req/s for {seconds:.0f} s"
        )
        tally, samples = Tally(), []
        events = [
            (seconds * 0.4, "restart Postgres", pg.restart),
            (seconds * 0.7, "restart Redis", redis.restart),
        ]
        t0 = time.monotonic()
        asyncio.run(
            soak(
                urls,
                rate,
                seconds,
                events,
                tally,
                samples,
                pids,
                args.sample_s,
                max_inflight=args.max_inflight,
            )
        )
        wall = time.monotonic() - t0
        rss_final = [rss_mb(p) for p in pids]
        for g in gws:
            g.stop()  # clean shutdown: each sink writes what it holds (or spools it)
        # a spool left by a shutdown during an outage: one more start of each replays it
        leftovers = [p for g in gws for p in Path(g.settings.log.spool_dir).rglob("seg-*")]
        if leftovers:
            for g in gws:
                g.start()
            time.sleep(5)
            for g in gws:
                g.stop()
        rows = count_rows(pg.url, tally.answered | sat_tally.answered)

        warm = [s for s in samples if s["t"] >= seconds * args.warmup_frac]
        rss = []
        for k in range(len(pids)):
            series = [s["rss_mb"][k] for s in warm if s["rss_mb"][k] > 0]
            if series:
                rss.append(
                    {
                        "after_warmup_mb": series[0],
                        "end_mb": series[-1],
                        "max_mb": max(series),
                        "growth_pct": (series[-1] - series[0]) / series[0] * 100,
                    }
                )
        windows = p99_windows(tally.lat, args.window_s)
        p99s = [w["p99_ms"] for w in windows]
        result = {
            "minutes": args.minutes,
            "durability": args.durability,
            "saturation_rps": round(sat, 1),
            "offered_rps": round(rate, 1),
            "wall_s": round(wall, 1),
            "answered": len(tally.answered),
            "answered_rps": round(len(tally.answered) / wall, 1),
            "no_answer": tally.failed,
            "client_overload_skips": tally.overload,
            "statuses": tally.statuses,
            "rows": rows,
            "rss": rss,
            "rss_final_mb": rss_final,
            "p99_windows": windows,
            "p99_ms": {
                "min": min(p99s, default=0),
                "median": statistics.median(p99s) if p99s else 0,
                "max": max(p99s, default=0),
            },
            "samples": samples,
        }
    finally:
        for g in gws:
            with contextlib.suppress(Exception):
                g.stop()
        for svc in (provider, redis, pg):
            if svc is not None:
                with contextlib.suppress(Exception):
                    svc.stop()
        if args.keep_dir:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)

    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    r = result["rows"]
    print(
        f"\nsoak: {args.minutes:g} min, durability={args.durability}, two gateways, private Postgres + Redis "
        f"(each restarted once)"
    )
    print(
        f"  load      saturation {result['saturation_rps']} req/s, offered {result['offered_rps']} req/s "
        f"({'fixed' if args.rate is not None else f'{args.load:.0%}'}), answered {result['answered']} ({result['answered_rps']} req/s), "
        f"no answer {result['no_answer']}, skipped at the client cap {result['client_overload_skips']}"
    )
    print(f"  statuses  {result['statuses']}")
    print(
        f"  rows      {r['rows']} in the log; lost {r['lost']}, duplicated {r['duplicated']}, "
        f"rows of unanswered requests {r['extra_unanswered']}"
    )
    for k, x in enumerate(result["rss"]):
        print(
            f"  RSS gw{k + 1}   {x['after_warmup_mb']:.0f} MB after warm-up -> {x['end_mb']:.0f} MB at end "
            f"({x['growth_pct']:+.1f}%), max {x['max_mb']:.0f} MB"
        )
    p = result["p99_ms"]
    print(
        f"  p99       per {args.window_s:g} s window: min {p['min']:.1f} / median {p['median']:.1f} / "
        f"max {p['max']:.1f} ms"
    )
    for w in windows:
        print(f"    t={w['t']:6.0f}s n={w['n']:6d} p50 {w['p50_ms']:7.1f} ms  p99 {w['p99_ms']:7.1f} ms")
    return 0 if r["lost"] == 0 and r["duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
