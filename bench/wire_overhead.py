"""What the Responses API costs next to chat completions inside one gateway, without the network.

One gateway app (in-process, httpx's ASGI transport; SQLite log, bodies hashed) in front of the fake
provider (a thread, real HTTP). The same request goes through `/v1/chat/completions` and through
`/v1/responses` (streamed and not) in alternating blocks of `--block` requests, `--rounds` times, so
both APIs see the same load on the box; the minimum block mean is the cost with the least
disturbance, the median shows the spread. The CPU time of the gateway's thread per request
(`time.thread_time`: the gateway and the client share the thread, the upstream runs in its own)
is also kept: on a shared, loaded box it moves far less than the wall time.

Usage: python bench/wire_overhead.py [--rounds 40] [--block 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
RESP = {"model": "fake-model", "input": "Say hello in five words.", "max_output_tokens": 16, "store": False}
CASES = [("chat", "/v1/chat/completions", CHAT), ("responses", "/v1/responses", RESP),
         ("chat stream", "/v1/chat/completions", {**CHAT, "stream": True}),
         ("responses stream", "/v1/responses", {**RESP, "stream": True})]


async def run(rounds: int, block: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    import httpx

    from backends.fake_provider import FakeProviderThread
    from gateway.app import create_app
    from requestlog.migrate import upgrade
    from tests.support.gateway import gateway_settings

    tmp = Path(tempfile.mkdtemp(prefix="hg-wire-"))
    url = f"sqlite+aiosqlite:///{tmp / 'log.db'}"
    upgrade(url)
    out: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    with FakeProviderThread() as fp:
        app = create_app(gateway_settings(fp.base_url, url, tmp, log={"bodies": "hashed", "spool_dir": str(tmp)}))
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
            for i in range(rounds):
                for name, path, body in CASES:
                    t0, c0 = time.perf_counter(), time.thread_time()
                    for _ in range(block):
                        r = await client.post(path, json=body)
                        assert r.status_code == 200, r.text
                    out[name].append((time.perf_counter() - t0) / block * 1000)
                    cpu[name].append((time.thread_time() - c0) / block * 1e6)
                print(f"\rround {i + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--block", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res, cpu = asyncio.run(run(args.rounds, args.block))
    summary = {k: {"min_ms": min(v), "median_ms": statistics.median(v), "cpu_us_median": statistics.median(cpu[k]),
                   "cpu_us_min": min(cpu[k])} for k, v in res.items()}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print("| request | min ms | median ms | vs chat (min) | CPU µs/req (median) | CPU vs chat |\n|---|---|---|---|---|---|")
    for name, s in summary.items():
        base = summary["chat stream" if "stream" in name else "chat"]
        print(f"| {name} | {s['min_ms']:.3f} | {s['median_ms']:.3f} | {s['min_ms'] / base['min_ms'] - 1:+.1%} | "
              f"{s['cpu_us_median']:.0f} | {s['cpu_us_median'] / base['cpu_us_median'] - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
