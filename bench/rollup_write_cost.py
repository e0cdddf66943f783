"""What the rollup triggers cost the request-log writer: records/s through `LogSink` with and without.

One fresh Postgres database; rounds alternate between the triggers installed and dropped, and each
round writes N records (a request with 1-2 attempts, like the gateway's) through the real sink
(batches of 500, idempotent inserts) and times until they are flushed. Feedback rows (one INSERT
each, as `/v1/feedback` does) are timed the same way. Prints the median records/s of each mode and
the ratio; ``--json`` for machines.

Usage: ``python bench/rollup_write_cost.py [--records 5000] [--rounds 5] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from requestlog import migrate, rollups, tables  # noqa: E402
from requestlog.rows import AttemptRow, RequestRow  # noqa: E402
from requestlog.sink import LogSink  # noqa: E402
from requestlog.writer import make_engine  # noqa: E402


def records(n: int, tag: str) -> list[tuple[RequestRow, list[AttemptRow]]]:
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        rid = f"{tag}-{i}"
        t = now - timedelta(seconds=i)
        atts = [
            AttemptRow(
                id=f"{rid}-{k}",
                request_id=rid,
                attempt_no=k,
                deployment=f"d{(i + k) % 8}",
                provider="p",
                upstream_model="m",
                started_at=t,
                latency_ms=50.0 + i % 400,
                ttft_ms=10.0,
                status="error" if k == 0 and i % 10 == 0 else "ok",
                cost_usd=0.0001,
            )
            for k in range(2 if i % 10 == 0 else 1)
        ]
        out.append(
            (
                RequestRow(
                    id=rid,
                    created_at=t,
                    endpoint="chat",
                    api_key_id=f"k{i % 20}",
                    user=f"u{i % 40}",
                    team=f"t{i % 5}",
                    policy=f"p{i % 3}",
                    served_model=f"m{i % 8}",
                    cost_usd=0.0002,
                    latency_ms=60.0,
                    propensity=0.5,
                    attempts_count=len(atts),
                ),
                atts,
            )
        )
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--feedback", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    db = f"hg_bench_rollcost_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    async with admin.connect() as c:
        await c.execute(sa.text(f'CREATE DATABASE "{db}"'))
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
    rates: dict[str, list[float]] = {"with": [], "without": []}
    fb_rates: dict[str, list[float]] = {"with": [], "without": []}
    try:
        await migrate.upgrade_async(url)
        engine = create_async_engine(url)
        installed = True
        for r in range(args.rounds * 2):
            mode = "with" if r % 2 == 0 else "without"
            want = mode == "with"
            if want != installed:
                stmts = (
                    rollups.create_triggers_sql("postgresql")
                    if want
                    else rollups.drop_triggers_sql("postgresql")
                )
                async with engine.begin() as c:
                    for s in stmts:
                        await c.execute(sa.text(s))
                installed = want
            recs = records(args.records, f"r{r}")
            writer_engine = make_engine(url)
            sink = LogSink(
                url,
                spool_dir=tempfile.mkdtemp(prefix="hg-rollcost-"),
                batch_max_rows=500,
                batch_max_ms=20,
                engine=writer_engine,
            )
            await sink.start()
            t0 = time.perf_counter()
            for req, atts in recs:
                sink.record(req, atts)
            await sink.flush()
            rates[mode].append(args.records / (time.perf_counter() - t0))
            await sink.aclose()
            await writer_engine.dispose()
            t0 = time.perf_counter()
            for i in range(args.feedback):
                async with engine.begin() as c:
                    await c.execute(
                        sa.insert(tables.feedback).values(
                            id=uuid.uuid4().hex,
                            request_id=f"r{r}-{i}",
                            source="user",
                            score=0.5,
                            created_at=datetime.now(UTC),
                        )
                    )
            fb_rates[mode].append(args.feedback / (time.perf_counter() - t0))
            if not args.json:
                print(
                    f"round {r + 1}: {mode:<7} triggers  {rates[mode][-1]:8.0f} records/s  "
                    f"{fb_rates[mode][-1]:6.0f} feedback/s",
                    flush=True,
                )
        await engine.dispose()
    finally:
        async with admin.connect() as c:
            await c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        await admin.dispose()
    out = {
        m: {
            "records_per_s_median": statistics.median(rates[m]),
            "feedback_per_s_median": statistics.median(fb_rates[m]),
            "records_per_s": [round(x) for x in rates[m]],
        }
        for m in rates
    }
    out["writer_cost"] = 1 - out["with"]["records_per_s_median"] / out["without"]["records_per_s_median"]
    out["feedback_cost"] = 1 - out["with"]["feedback_per_s_median"] / out["without"]["feedback_per_s_median"]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"\nlog writer: {out['with']['records_per_s_median']:.0f} records/s with rollups, "
            f"{out['without']['records_per_s_median']:.0f} without ({out['writer_cost']:+.1%} cost)"
        )
        print(
            f"feedback:   {out['with']['feedback_per_s_median']:.0f}/s with, "
            f"{out['without']['feedback_per_s_median']:.0f}/s without ({out['feedback_cost']:+.1%} cost)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
