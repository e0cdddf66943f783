"""Admin console at scale: every dashboard and the request-log page's filtered queries on 1M requests.

Fills a fresh PostgreSQL database (migrated, so the rollup triggers run as rows go in) with N
requests over the last 30 days: 20 keys (2 users each), 5 teams, 8 models/deployments, 3 policies,
one attempt per request plus a failed first try on every tenth, and feedback on 60% of requests.
Rows are generated in the database (``generate_series``, in chunks of 100k, each one INSERT
statement per table, so the statement-level triggers aggregate each chunk once). Then a gateway
(``hybridgate serve``, one worker) answers, over HTTP with the admin token:

* every dashboard endpoint for a 30-day range (and with a policy/key filter), ``--repeat`` times;
* the request-log page's queries (30-day range, 50 rows, newest first) with each filter, and the
  next page.

Prints a table of p50/p95 per endpoint and the target lines (dashboards p95 <= 300 ms,
request log p95 <= 200 ms); ``--json`` prints the results as JSON instead.

Usage: ``python bench/admin_dashboards.py [--rows 1000000] [--repeat 20] [--keep-db] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.console.dashboards import DASHBOARDS  # noqa: E402
from requestlog import migrate  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PORT = 18391
TOKEN = "bench-admin-token"
CHUNK = 100_000
MODELS = 8
BASE_MS = [120, 180, 250, 320, 450, 600, 900, 1400]
QUALITY = [0.45, 0.52, 0.6, 0.64, 0.7, 0.76, 0.83, 0.9]
PRICE = [0.0002, 0.0004, 0.0008, 0.0012, 0.002, 0.004, 0.008, 0.015]

# u(k): a uniform [0, 1) number per row g, stable across statements (so attempts and feedback
# agree with their request without a join).
U = "((abs(hashint8(g * 7919 + {k})) % 1000003) / 1000003.0)"


def u(k: int) -> str:
    return U.format(k=k)


def _arr(xs: list[float]) -> str:
    return "ARRAY[" + ",".join(str(x) for x in xs) + "]::float8[]"


MODEL = f"(floor({u(2)} * {MODELS}))::int"
CREATED = f"(CAST(%(now)s AS timestamptz) - {u(1)} * interval '30 days')"

REQUESTS_SQL = f"""
INSERT INTO requests (id, created_at, endpoint, api_key_id, "user", team, requested_model, served_model, provider,
    deployment, policy, policy_version, route_reason, propensity, status, http_status, prompt_tokens,
    completion_tokens, cost_usd, latency_ms, ttft_ms, streamed, attempts_count)
SELECT 'b' || g, {CREATED}, 'chat', 'key' || (g % 20), 'user' || (g % 40), 'team' || (g % 5), 'policy' || (g % 3),
    'model' || {MODEL}, 'openai_compatible', 'dep' || {MODEL}, 'policy' || (g % 3), 1, 'bench', 0.125,
    CASE WHEN {u(4)} < 0.03 THEN 'error' ELSE 'ok' END, CASE WHEN {u(4)} < 0.03 THEN 502 ELSE 200 END,
    200 + (g % 300), 50 + (g % 200), ({_arr(PRICE)})[{MODEL} + 1] * (0.5 + {u(5)}),
    ({_arr(BASE_MS)})[{MODEL} + 1] * exp(({u(3)} - 0.5) * 1.5), ({_arr(BASE_MS)})[{MODEL} + 1] * 0.2,
    false, CASE WHEN g % 10 = 0 THEN 2 ELSE 1 END
FROM generate_series(CAST(%(lo)s AS bigint), CAST(%(hi)s AS bigint)) g
"""

ATTEMPTS_SQL = f"""
INSERT INTO attempts (id, request_id, attempt_no, deployment, provider, upstream_model, started_at, latency_ms,
    ttft_ms, status, http_status, prompt_tokens, completion_tokens, cost_usd)
SELECT 'b' || g || '-' || k, 'b' || g, k,
    'dep' || CASE WHEN k = 0 AND g % 10 = 0 THEN ({MODEL} + 1) % {MODELS} ELSE {MODEL} END,
    'openai_compatible', 'm', {CREATED},
    ({_arr(BASE_MS)})[{MODEL} + 1] * exp(({u(3)} - 0.5) * 1.5) * (1 + k * 0.1),
    ({_arr(BASE_MS)})[{MODEL} + 1] * 0.2,
    CASE WHEN (k = 0 AND g % 10 = 0) OR {u(4)} < 0.03 THEN 'error' ELSE 'ok' END, 200, 200, 50, 0.001
FROM generate_series(CAST(%(lo)s AS bigint), CAST(%(hi)s AS bigint)) g CROSS JOIN LATERAL generate_series(0, CASE WHEN g % 10 = 0 THEN 1 ELSE 0 END) k
"""

FEEDBACK_SQL = f"""
INSERT INTO feedback (id, request_id, source, score, created_at)
SELECT 'f' || g, 'b' || g, 'user', least(1.0, greatest(0.0, ({_arr(QUALITY)})[{MODEL} + 1] + ({u(6)} - 0.5) * 0.4)),
    {CREATED}
FROM generate_series(CAST(%(lo)s AS bigint), CAST(%(hi)s AS bigint)) g WHERE {u(5)} < 0.6
"""


def seed(dsn: str, rows: int, now: datetime, quiet: bool) -> float:
    from tqdm import tqdm

    t0 = time.perf_counter()
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        tqdm(total=rows, unit="req", disable=quiet, desc="seeding") as bar,
    ):
        for lo in range(1, rows + 1, CHUNK):
            hi = min(lo + CHUNK - 1, rows)
            params = {"lo": lo, "hi": hi, "now": now}
            for stmt in (
                FEEDBACK_SQL,
                REQUESTS_SQL,
                ATTEMPTS_SQL,
            ):  # feedback first: counted with its request
                conn.execute(stmt.replace(" % ", " %% "), params)  # modulo, not a placeholder
            bar.update(hi - lo + 1)
        for t in (
            "requests",
            "attempts",
            "feedback",
            "rollup_requests_hour",
            "rollup_requests_day",
            "rollup_attempts_hour",
            "rollup_attempts_day",
            "rollup_latency_hour",
            "rollup_latency_day",
        ):
            conn.execute(f"ANALYZE {t}")
    return time.perf_counter() - t0


def timed(client: httpx.Client, path: str, params: dict[str, str], repeat: int) -> dict[str, Any]:
    for _ in range(2):  # warm: connection, statement caches
        client.get(path, params=params).raise_for_status()
    ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = client.get(path, params=params)
        ms.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    ms.sort()
    return {
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
        "max_ms": ms[-1],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--pg-admin", default=PG_ADMIN)
    ap.add_argument("--keep-db", action="store_true", help="keep the seeded database (its name is printed)")
    ap.add_argument(
        "--reuse-db", default=None, help="time against a database seeded by an earlier --keep-db run"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    db = args.reuse_db or f"hg_bench_admin_{uuid.uuid4().hex[:8]}"
    if not args.reuse_db:
        with psycopg.connect(args.pg_admin, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{db}"')
    host = args.pg_admin.split("@", 1)[1].split("/", 1)[0]
    url = f"postgresql+asyncpg://postgres@{host}/{db}"
    dsn = f"postgresql://postgres@{host}/{db}"
    tmp = Path(tempfile.mkdtemp(prefix="hg-bench-admin-"))
    proc = None
    try:
        now = datetime.now(UTC)
        seed_s = 0.0
        if not args.reuse_db:
            migrate.upgrade(url)
            seed_s = seed(dsn, args.rows, now, args.json)
        if args.keep_db:
            print(f"database kept: {db} (--reuse-db {db})", file=sys.stderr)
        with psycopg.connect(dsn) as c:
            counts = {
                t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                for t in (
                    "requests",
                    "attempts",
                    "feedback",
                    "rollup_requests_hour",
                    "rollup_requests_day",
                    "rollup_latency_hour",
                    "rollup_latency_day",
                )
            }
        cfg = tmp / "hybridgate.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "port": PORT,
                    "database_url": url,
                    "admin_token": TOKEN,
                    "require_keys": True,
                    "log": {"spool_dir": str(tmp / "spool")},
                    "local_model": {"enabled": False},
                    "deployments": [
                        {
                            "name": f"dep{i}",
                            "model": f"model{i}",
                            "upstream_model": "m",
                            "api_base": "http://127.0.0.1:9/v1",
                        }
                        for i in range(MODELS)
                    ],
                }
            )
        )
        env = {**os.environ, "HYBRIDGATE_CONFIG": str(cfg)}
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "hybridgate"), "serve"],
            env=env,
            stdout=open(tmp / "gateway.log", "wb"),  # noqa: SIM115 - the child writes it until it stops
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{PORT}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("gateway did not start: " + (tmp / "gateway.log").read_text()[-2000:])
            time.sleep(0.2)
        results: list[dict[str, Any]] = []
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            for name in DASHBOARDS:
                for label, extra in (("30d", {}), ("30d policy+key", {"policy": "policy1", "key": "key3"})):
                    r = timed(
                        client,
                        f"/admin/api/console/dashboards/{name}",
                        {"range": "30d", **extra},
                        args.repeat,
                    )
                    results.append({"kind": "dashboard", "endpoint": name, "query": label, **r})
            first = client.get("/admin/api/console/requests", params={"range": "30d"}).json()
            filters: list[tuple[str, dict[str, str]]] = [
                ("none", {}),
                ("key", {"key": "key7"}),
                ("user", {"user": "user13"}),
                ("team", {"team": "team2"}),
                ("policy", {"policy": "policy2"}),
                ("model", {"model": "model5"}),
                ("status=error", {"status": "error"}),
                ("key+status", {"key": "key7", "status": "error"}),
                ("model+policy", {"model": "model1", "policy": "policy0"}),
                ("next page", {"before": first["next_before"]}),
            ]
            for label, params in filters:
                r = timed(
                    client,
                    "/admin/api/console/requests",
                    {"range": "30d", "limit": "50", **params},
                    args.repeat,
                )
                results.append({"kind": "request_log", "endpoint": "requests", "query": label, **r})
        dash_p95 = max(r["p95_ms"] for r in results if r["kind"] == "dashboard")
        log_p95 = max(r["p95_ms"] for r in results if r["kind"] == "request_log")
        summary = {
            "rows": args.rows,
            "seed_s": round(seed_s, 1),
            "counts": counts,
            "date": now.isoformat(),
            "dashboards_worst_p95_ms": round(dash_p95, 1),
            "request_log_worst_p95_ms": round(log_p95, 1),
            "dashboards_ok": dash_p95 <= 300,
            "request_log_ok": log_p95 <= 200,
        }
        if args.json:
            print(json.dumps({"summary": summary, "results": results}, indent=2))
        else:
            print(f"\nseeded {args.rows:,} requests in {seed_s:.0f} s; rows: {counts}\n")
            print("| kind | endpoint | query | p50 ms | p95 ms | max ms |\n|---|---|---|---:|---:|---:|")
            for r in results:
                print(
                    f"| {r['kind']} | {r['endpoint']} | {r['query']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} "
                    f"| {r['max_ms']:.1f} |"
                )
            print(
                f"\ndashboards: worst p95 {dash_p95:.1f} ms (target <= 300): {'PASS' if dash_p95 <= 300 else 'FAIL'}"
            )
            print(
                f"request log: worst p95 {log_p95:.1f} ms (target <= 200): {'PASS' if log_p95 <= 200 else 'FAIL'}"
            )
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if not args.keep_db and not args.reuse_db:
            with psycopg.connect(args.pg_admin, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
