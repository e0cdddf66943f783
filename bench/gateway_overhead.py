"""Gateway overhead: upstream direct vs through hybridgate vs through the LiteLLM proxy, one run.

What it does (all on 127.0.0.1, every process stopped on exit):
  1. starts our fake provider (zero added latency) pinned to CPU0, with an 8-token reply;
  2. for each target (direct upstream, hybridgate, LiteLLM proxy): starts it pinned to CPU1
     (hybridgate: one worker, full Postgres request logging, gateway keys on; LiteLLM: one worker,
     its own venv, master key), records time-to-ready and idle RSS, then
       - a sequential probe (aiohttp client, c=1): total latency and time to first streamed token,
       - wrk (pinned to CPU0 with the upstream) at fixed concurrencies, non-streamed and streamed,
     and RSS after the load;
  3. prints a markdown table and writes JSON (`--out`).

`--durability off,batch,always` runs hybridgate once per request-log durability mode (the
write-ahead log: `log.durability`), side by side in one run, to show what crash safety costs.

Usage:
  python bench/gateway_overhead.py [--duration 10] [--concs 1,8,64] [--probe-n 300]
      [--litellm-venv /tmp/llvenv] [--pg-admin postgresql://postgres@127.0.0.1:5432/test] [--out FILE]
      [--repeat N]  (hybridgate also serves the same request through the Responses API, alternating with
                     chat in ABBA order; each repeat's Responses/chat ratio is reported, and their median)
      [--targets direct,hybridgate,litellm] [--durability batch]

LiteLLM's venv: `VENV=/tmp/llvenv LITELLM_SPEC='litellm[proxy]==1.106.2'
../shared/bench/litellm_baseline/setup.sh` (from the repo root). Without it, LiteLLM is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
UP_PORT, GW_PORT, LL_PORT = 9101, 9102, 9103
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 16}
# The same request in the Responses API's form, measured against hybridgate in the same run.
RESP_BODY = {"model": "fake-model", "input": "Say hello in five words.", "max_output_tokens": 16, "store": False}
CHAT, RESPONSES = "/v1/chat/completions", "/v1/responses"

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-none")
wrk.body = '%s'
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format(
    'JSON {"requests":%%d,"rps":%%.1f,"p50_ms":%%.3f,"p99_ms":%%.3f,"non2xx":%%d,"errors":%%d}\\n',
    summary.requests, summary.requests / secs, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its children: over a wrk run, divided by
    the requests served, the gateway's CPU per request. On a shared, loaded box that moves far less
    than its throughput (a starved gateway serves fewer requests, not cheaper ones), and on an idle
    core throughput is 1 / (CPU per request)."""
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                      text=True).stdout.split()]
    ticks = 0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                      text=True).stdout.split()]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
    return total / 1024


def wait_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            time.sleep(0.02)
    return False


class Proc:
    def __init__(self, cmd: list[str], cpu: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.log = open(log or os.devnull, "w")  # noqa: SIM115
        self.p = subprocess.Popen(["taskset", "-c", cpu, *cmd], env={**os.environ, **(env or {})},
                                  stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGTERM)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
        self.log.close()


def wrk(url: str, body: dict[str, Any], conc: int, duration: int, key: str, tmp: Path,
        path: str = CHAT) -> dict[str, Any]:
    script = tmp / f"s{uuid.uuid4().hex[:6]}.lua"
    script.write_text(LUA % json.dumps(body).replace("'", "\\'"))
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
           url + path]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENCH_KEY": key}).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("JSON ")), None)
    return json.loads(line[5:]) if line else {"error": out[-500:]}


async def probe(url: str, key: str, n: int, path: str = CHAT) -> dict[str, float]:
    """Sequential requests: total latency (non-stream) and TTFT / total (stream), ms. The first token is
    the first content delta (chat) or `response.output_text.delta` event (Responses)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    lat: list[float] = []
    ttft: list[float] = []
    body = RESP_BODY if path == RESPONSES else BODY

    def is_first(line: bytes) -> bool:
        if path == RESPONSES:
            return line.startswith(b"event: response.output_text.delta")
        return b'"content"' in line and b'"content":""' not in line

    async with aiohttp.ClientSession() as s:
        for i in range(n + 30):
            t0 = time.perf_counter()
            async with s.post(url + path, json=body, headers=headers) as r:
                await r.read()
                assert r.status == 200, await r.text()
            t1 = time.perf_counter()
            async with s.post(url + path, json={**body, "stream": True}, headers=headers) as r:
                first = None
                async for line in r.content:
                    if first is None and is_first(line):
                        first = time.perf_counter()
                t2 = time.perf_counter()
            if i >= 30:  # warm-up excluded
                lat.append((t1 - t0) * 1000)
                ttft.append(((first or t2) - t1) * 1000)
    q = statistics.quantiles
    return {"p50_ms": statistics.median(lat), "p99_ms": q(lat, n=100)[98],
            "ttft_p50_ms": statistics.median(ttft), "ttft_p99_ms": q(ttft, n=100)[98]}


def start_hybridgate(
    tmp: Path, pg_admin: str, rollups: bool = True, durability: str = "batch"
) -> tuple[Proc, str, float]:
    import psycopg

    tmp.mkdir(parents=True, exist_ok=True)
    db = f"hg_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    host = pg_admin.split("@", 1)[1].split("/", 1)[0]
    db_url = f"postgresql+asyncpg://postgres@{host}/{db}"
    cfg = tmp / "hybridgate.yaml"
    cfg.write_text(json.dumps({
        "host": "127.0.0.1", "port": GW_PORT, "database_url": db_url, "require_keys": True,
        "log": {"bodies": "hashed", "spool_dir": str(tmp / "spool"), "durability": durability},
        "local_model": {"enabled": False},
        "deployments": [{"name": "fake", "model": "fake-model", "provider": "openai_compatible",
                         "upstream_model": "fake-model", "api_base": f"http://127.0.0.1:{UP_PORT}/v1",
                         "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}],
    }))
    env = {"HYBRIDGATE_CONFIG": str(cfg)}
    bin_ = str(Path(PY).parent / "hybridgate")
    subprocess.run([bin_, "migrate"], env={**os.environ, **env}, check=True, capture_output=True)
    if not rollups:  # the admin dashboards' rollup triggers off: what writing them costs
        from requestlog.rollups import drop_triggers_sql

        with psycopg.connect(f"postgresql://postgres@{host}/{db}", autocommit=True) as c:
            for stmt in drop_triggers_sql("postgresql"):
                c.execute(stmt)
    key_out = subprocess.run([bin_, "keys", "create", "bench"], env={**os.environ, **env}, check=True,
                             capture_output=True, text=True).stdout
    key = json.loads(key_out)["key"]
    t0 = time.monotonic()
    proc = Proc([bin_, "serve"], "1", env, tmp / "gateway.log")
    if not wait_ready(f"http://127.0.0.1:{GW_PORT}/healthz", 30):
        raise RuntimeError("hybridgate did not start: " + (tmp / "gateway.log").read_text()[-2000:])
    return proc, key, time.monotonic() - t0


def start_litellm(venv: Path, tmp: Path) -> tuple[Proc, str, float]:
    key = "sk-" + secrets.token_hex(32)
    cfg = tmp / "litellm.yaml"
    cfg.write_text(f"""model_list:
  - model_name: fake-model
    litellm_params: {{model: openai/fake-model, api_base: "http://127.0.0.1:{UP_PORT}/v1", api_key: sk-fake}}
litellm_settings: {{num_retries: 0, request_timeout: 30, callbacks: []}}
general_settings: {{master_key: os.environ/LITELLM_MASTER_KEY}}
""")
    env = {"LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True", "LITELLM_LOCAL_BLOG_POSTS": "True",
           "LITELLM_LOCAL_POLICY_TEMPLATES": "True", "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True"}
    t0 = time.monotonic()
    proc = Proc([str(venv / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1", "--port",
                 str(LL_PORT)], "1", env, tmp / "litellm.log")
    if not wait_ready(f"http://127.0.0.1:{LL_PORT}/health/liveliness", 180):
        raise RuntimeError("litellm did not start")
    return proc, key, time.monotonic() - t0


def _best_probe(best: dict[str, float] | None, new: dict[str, float]) -> dict[str, float]:
    return new if best is None or new["p50_ms"] < best["p50_ms"] else best


def measure(name: str, url: str, key: str, pid: int | None, args: argparse.Namespace, tmp: Path,
            started_s: float | None) -> dict[str, Any]:
    res: dict[str, Any] = {"target": name, "start_s": started_s}
    time.sleep(1.5)
    if pid:
        res["rss_idle_mb"] = rss_mb(pid)
    responses = name == "hybridgate"  # the Responses API through the same gateway process, in the same run
    # Probes and wrk runs alternate between the APIs and repeat `--repeat` times; the best of the repeats
    # is kept (least disturbed by other load on the box), so both APIs see the same conditions.
    for _ in range(args.repeat):
        res["probe"] = _best_probe(res.get("probe"), asyncio.run(probe(url, key, args.probe_n)))
        if responses:
            res["probe_responses"] = _best_probe(res.get("probe_responses"),
                                                 asyncio.run(probe(url, key, args.probe_n, RESPONSES)))
    wrk(url, BODY, 8, 3, key, tmp)  # warm-up
    pairs: list[list[tuple[str, dict[str, Any], str]]] = [[("chat", BODY, CHAT)], [("chat_stream", {**BODY, "stream": True}, CHAT)]]
    if responses:
        pairs[0].append(("responses", RESP_BODY, RESPONSES))
        pairs[1].append(("responses_stream", {**RESP_BODY, "stream": True}, RESPONSES))
    for pair in pairs:
        for c in args.concs:
            ratios: list[float] = []
            for i in range(args.repeat):
                got: dict[str, float] = {}
                # ABBA order (chat first, then Responses first, …) so a drift in the box's load
                # favours neither API; each repeat's Responses/chat ratio is kept as a pair.
                for mode, body, path in pair if i % 2 == 0 else pair[::-1]:
                    c0 = cpu_s(pid) if pid else 0.0
                    r = wrk(url, body, c, args.duration, key, tmp, path)
                    if pid and r.get("requests"):
                        r["cpu_us_per_req"] = (cpu_s(pid) - c0) / r["requests"] * 1e6
                        res.setdefault(f"{mode}_c{c}_cpu_us", []).append(r["cpu_us_per_req"])
                    got[mode] = r.get("rps", 0)
                    best = res.get(f"{mode}_c{c}")
                    if best is None or r.get("rps", 0) > best.get("rps", 0):
                        res[f"{mode}_c{c}"] = r
                    print(f"  {name:10s} {mode:16s} c={c:<3d} {r}", flush=True)
                if len(pair) == 2 and got.get(pair[0][0]):
                    ratios.append(got[pair[1][0]] / got[pair[0][0]])
            if ratios:
                res[f"{pair[1][0]}_c{c}_ratios"] = ratios
    if pid:
        res["rss_after_mb"] = rss_mb(pid)
    return res


def table(results: list[dict[str, Any]], concs: list[int]) -> str:
    d = next((r for r in results if r["target"] == "direct"), None)
    lines = ["| target | start s | RSS idle / after MB | c=1 p50 / p99 ms (added) | TTFT p50 / p99 ms (added) | "
             + " | ".join(f"chat c={c} rps" for c in concs) + " | " + " | ".join(f"stream c={c} rps" for c in concs) + " |",
             "|" + "---|" * (5 + 2 * len(concs))]
    for r in results:  # in the order measured (a target may appear more than once)
        name = r["target"]
        p = r["probe"]
        added = "" if name == "direct" or d is None else (
            f" (+{p['p50_ms'] - d['probe']['p50_ms']:.2f} / +{p['p99_ms'] - d['probe']['p99_ms']:.2f})")
        added_t = "" if name == "direct" or d is None else (
            f" (+{p['ttft_p50_ms'] - d['probe']['ttft_p50_ms']:.2f} / +{p['ttft_p99_ms'] - d['probe']['ttft_p99_ms']:.2f})")
        rss = f"{r.get('rss_idle_mb', 0):.0f} / {r.get('rss_after_mb', 0):.0f}" if "rss_idle_mb" in r else "-"
        start = f"{r['start_s']:.2f}" if r.get("start_s") else "-"
        cells = [f"{r[f'chat_c{c}'].get('rps', 0):.0f}" for c in concs]
        cells += [f"{r[f'chat_stream_c{c}'].get('rps', 0):.0f}" for c in concs]
        lines.append(f"| {name} | {start} | {rss} | {p['p50_ms']:.2f} / {p['p99_ms']:.2f}{added} | "
                     f"{p['ttft_p50_ms']:.2f} / {p['ttft_p99_ms']:.2f}{added_t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def responses_table(results: list[dict[str, Any]], concs: list[int]) -> str:
    """hybridgate's Responses API against its chat completions, both from the same run and process."""
    by = {r["target"]: r for r in results}
    hg, d = by.get("hybridgate"), by.get("direct")
    if hg is None or "probe_responses" not in hg:
        return ""
    base = d["probe"] if d is not None else {"p50_ms": 0.0, "ttft_p50_ms": 0.0}
    lines = ["| hybridgate API | c=1 p50 ms (added vs direct) | TTFT p50 ms (added) | "
             + " | ".join(f"c={c} rps" for c in concs) + " | " + " | ".join(f"stream c={c} rps" for c in concs) + " |",
             "|" + "---|" * (3 + 2 * len(concs))]
    for label, probe_key, mode in (("chat completions", "probe", "chat"), ("Responses", "probe_responses", "responses")):
        p = hg[probe_key]
        cells = [f"{hg[f'{mode}_c{c}'].get('rps', 0):.0f}" for c in concs]
        cells += [f"{hg[f'{mode}_stream_c{c}'].get('rps', 0):.0f}" for c in concs]
        lines.append(f"| {label} | {p['p50_ms']:.2f} (+{p['p50_ms'] - base['p50_ms']:.2f}) | "
                     f"{p['ttft_p50_ms']:.2f} (+{p['ttft_p50_ms'] - base['ttft_p50_ms']:.2f}) | " + " | ".join(cells) + " |")
    ratios = [hg[f"responses{s}_c{c}"].get("rps", 0) / max(hg[f"chat{s}_c{c}"].get("rps", 0), 1e-9)
              for s in ("", "_stream") for c in concs]
    lines.append(f"\nResponses / chat throughput (best of the repeats each): {min(ratios):.2f}–{max(ratios):.2f}×")
    paired = []
    for s in ("", "_stream"):
        for c in concs:
            rs = hg.get(f"responses{s}_c{c}_ratios")
            if rs:
                paired.append(f"{'stream ' if s else ''}c={c}: {statistics.median(rs):.2f}× "
                              f"({', '.join(f'{r:.2f}' for r in rs)})")
    if paired:
        lines.append("Responses / chat, median of the back-to-back pairs: " + "; ".join(paired))
    cpu = []
    for s in ("", "_stream"):
        for c in concs:
            rc, cc = hg.get(f"responses{s}_c{c}_cpu_us"), hg.get(f"chat{s}_c{c}_cpu_us")
            if rc and cc:
                chat_us, resp_us = statistics.median(cc), statistics.median(rc)
                cpu.append(f"{'stream ' if s else ''}c={c}: {chat_us:.0f} / {resp_us:.0f} µs "
                           f"(throughput capacity {chat_us / resp_us:.2f}×)")
    if cpu:
        lines.append("gateway CPU per request, chat / Responses (median of the repeats): " + "; ".join(cpu))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concs", default="1,8,64")
    ap.add_argument("--probe-n", type=int, default=300)
    ap.add_argument("--litellm-venv", default="/tmp/llvenv")
    ap.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--targets", default="direct,hybridgate,litellm")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement, alternating APIs; best kept")
    ap.add_argument("--durability", default="batch",
                    help="comma-separated log.durability modes for hybridgate (off,batch,always), one run each")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.concs = [int(c) for c in args.concs.split(",")]
    if not shutil.which("wrk"):
        print("wrk is required (apt-get install wrk)", file=sys.stderr)
        return 2
    targets = args.targets.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="hg-bench-"))
    up = Proc([PY, "-m", "backends.fake_provider", "--port", str(UP_PORT), "--reply-mode", "lorem",
               "--reply-tokens", "8"], "0", {"PYTHONPATH": str(ROOT)}, tmp / "upstream.log")
    results: list[dict[str, Any]] = []
    try:
        if not wait_ready(f"http://127.0.0.1:{UP_PORT}/health", 20):
            raise RuntimeError("fake provider did not start")
        if "direct" in targets:
            results.append(measure("direct", f"http://127.0.0.1:{UP_PORT}", "none", None, args, tmp, None))
        modes = args.durability.split(",")
        # in the order given: e.g. hybridgate,hybridgate-norollups,hybridgate; each once per durability mode
        runs = [(t, m) for t in targets if t.startswith("hybridgate") for m in modes]
        for target, mode in runs:
            rollups = target != "hybridgate-norollups"
            gw, key, start_s = start_hybridgate(tmp / f"{target}-{mode}", args.pg_admin, rollups, mode)
            name = target if len(modes) == 1 else f"{target} ({mode})"
            try:
                results.append(measure(name, f"http://127.0.0.1:{GW_PORT}", key, gw.p.pid, args, tmp, start_s))
            finally:
                gw.stop()
        venv = Path(args.litellm_venv)
        if "litellm" in targets and (venv / "bin" / "litellm").exists():
            ll, key, start_s = start_litellm(venv, tmp)
            try:
                results.append(measure("litellm", f"http://127.0.0.1:{LL_PORT}", key, ll.p.pid, args, tmp, start_s))
            finally:
                ll.stop()
    finally:
        up.stop()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print()
    print(table(results, args.concs))
    extra = responses_table(results, args.concs)
    if extra:
        print()
        print(extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
