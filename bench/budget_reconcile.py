"""What catching budgets up with the request log costs: `LoggedSpend.spent` on a populated log.

Fills a fresh PostgreSQL database with N requests spread over the current month (K keys, U users,
T teams; costs random), then times one periodic round's read for A accounts of each kind (month
periods), and the opening read of one account. Prints one JSON line.

Usage: ``python bench/budget_reconcile.py [--rows 1000000] [--accounts 100] [--url postgresql+asyncpg://...]``
(default: a throwaway database on 127.0.0.1:5432, dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from requestlog import migrate  # noqa: E402
from requestlog.spend import LoggedSpend  # noqa: E402
from router.budget import BudgetLimit, account_period  # noqa: E402


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    db = f"bench_spend_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    async with admin.connect() as c:
        await c.execute(sa.text(f"CREATE DATABASE {db}"))
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
    try:
        migrate.upgrade(url)
        engine = create_async_engine(url)
        now = datetime.now(UTC)
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        t0 = time.perf_counter()
        async with engine.begin() as c:  # 2,000 keys, 500 users, 50 teams, spread over the month so far
            await c.execute(sa.text(
                "INSERT INTO requests (id, created_at, endpoint, api_key_id, \"user\", team, cost_usd) "
                "SELECT 'r' || g, CAST(:start AS timestamptz) + random() * (CAST(:now AS timestamptz) - CAST(:start AS timestamptz)), 'chat', 'k' || (g % 2000), "
                "'u' || (g % 500), 't' || (g % 50), random() / 1000 FROM generate_series(1, :n) g"),
                {"start": start, "now": now, "n": args.rows})
            await c.execute(sa.text("ANALYZE requests"))
        fill_s = time.perf_counter() - t0
        spend = LoggedSpend(engine)
        out: dict[str, object] = {"rows": args.rows, "fill_s": round(fill_s, 1), "accounts_per_kind": args.accounts}
        for kind, n_names in (("key", 2000), ("user", 500), ("team", 50)):
            names = [f"{kind[0]}{i}" for i in range(min(args.accounts, n_names))]
            accounts = [account_period(BudgetLimit(f"{kind}:{nm}", 1.0, "month"), now) for nm in names]
            rows_each = args.rows // n_names
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                await spend.spent(accounts)
                times.append(time.perf_counter() - t)
            one = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                await spend.spent(accounts[:1])
                one.append(time.perf_counter() - t)
            out[kind] = {"rows_per_account": rows_each, "accounts": len(accounts),
                         "round_ms_median": round(1000 * statistics.median(times), 1),
                         "open_one_ms_median": round(1000 * statistics.median(one), 2)}
        await engine.dispose()
        print(json.dumps(out))
    finally:
        async with admin.connect() as c:
            await c.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
