"""Throughput and gateway-side CPU cost of LogSink (PostgreSQL by default; not collected by pytest).

    .venv/bin/python tests/requestlog/bench_rl_sink.py [--url postgresql+asyncpg://...] [--n 20000]

Without --url it creates (and drops) a scratch database on 127.0.0.1:5432. Reports:
* record(): cost of one call on the request path;
* burst: N requests recorded as fast as possible, time until all are in the database;
* paced: a steady offered load (default 2,000 requests/s for 5 s), and the CPU the whole
  process spent per second on it (record + batching + driver work: the gateway's overhead).
Each request carries --attempts attempt rows; "rows" counts requests + attempts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from requestlog import migrate  # noqa: E402
from requestlog.sink import LogSink  # noqa: E402
from tests.support.requestlog import make_request, scalar  # noqa: E402


async def bench(url: str, n: int, attempts: int, rate: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as spool:
        sink = LogSink(url, spool_dir=spool, batch_max_rows=500, batch_max_ms=50)
        await sink.start()

        rows = [make_request(f"b{uuid.uuid4().hex}", attempts) for _ in range(n)]
        t0 = time.perf_counter()
        for i in range(0, n, 100):
            for row in rows[i : i + 100]:
                sink.record(*row)
            await asyncio.sleep(0)  # a gateway yields between requests
        t_rec = time.perf_counter() - t0
        cpu0 = time.process_time()
        await sink.flush()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        total_rows = n * (1 + attempts)
        print(f"burst: {n} requests + {n * attempts} attempts = {total_rows} rows in {wall:.2f} s")
        print(
            f"       -> {n / wall:,.0f} requests/s, {total_rows / wall:,.0f} rows/s written to the database"
        )
        print(
            f"       record() loop incl. yields: {t_rec / n * 1e6:.2f} µs/request; writer CPU after: {cpu:.2f} s"
        )

        # paced load: the shape of real traffic
        paced = [make_request(f"p{uuid.uuid4().hex}", attempts) for _ in range(int(rate * seconds))]
        tick = 0.01
        per_tick = max(int(rate * tick), 1)
        peak = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, len(paced), per_tick):
            for row in paced[i : i + per_tick]:
                sink.record(*row)
            peak = max(peak, sink.stats()["queued"])
            target = t0 + (i // per_tick + 1) * tick
            await asyncio.sleep(max(target - time.perf_counter(), 0))
        await sink.flush()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(
            f"paced: {len(paced)} requests at {rate}/s over {wall:.2f} s; process CPU {cpu:.2f} s "
            f"= {cpu / wall * 100:.0f}% of one core ({cpu / len(paced) * 1e6:.0f} µs CPU per request "
            f"with {attempts} attempts), peak queue {peak}"
        )
        st = sink.stats()
        await sink.aclose()
        count = await scalar(url, "SELECT count(*) FROM requests")
        assert count == n + len(paced), (count, st)

        fresh = LogSink(url, spool_dir=spool)
        t0 = time.perf_counter()
        for row in rows:
            fresh.record(*row)
        print(f"record(): {(time.perf_counter() - t0) / n * 1e9:.0f} ns per call")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--attempts", type=int, default=2)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    url, scratch = args.url, None
    if url is None:
        import psycopg

        scratch = f"hg_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{scratch}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{scratch}"
    try:
        migrate.upgrade(url)
        print(f"pid {os.getpid()}, {os.cpu_count()} CPUs")
        asyncio.run(bench(url, args.n, args.attempts, args.rate, args.seconds))
    finally:
        if scratch:
            import psycopg

            with (
                contextlib.suppress(Exception),
                psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c,
            ):
                c.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


if __name__ == "__main__":
    main()
