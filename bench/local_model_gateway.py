"""Single-stream tokens/s of the shipped local model as `make run` serves it (through the gateway).

Starts `hybridgate serve` with the embedded defaults in a temporary directory (SQLite log, local
model on the CPU, no config), streams chat completions with the openai SDK and reports, per run:
time to first token, decode tokens/s after the first token, and overall tokens/s.

Usage: python bench/local_model_gateway.py [--runs 5] [--max-tokens 128] [--model auto]
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
import urllib.request
from pathlib import Path

PROMPTS = ["Tell me a story about a lighthouse keeper.", "What is the capital of France?",
           "Write a short poem about the sea.", "Explain why the sky is blue.", "Describe a busy market."]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--model", default="auto")
    ap.add_argument("--port", type=int, default=9310)
    args = ap.parse_args()
    import openai

    tmp = Path(tempfile.mkdtemp(prefix="hg-local-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDGATE_")}
    hg = str(Path(sys.executable).parent / "hybridgate")
    subprocess.run([hg, "migrate"], cwd=tmp, env=env, check=True, capture_output=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([hg, "serve", "--port", str(args.port)], cwd=tmp, env=env,
                            stdout=open(tmp / "serve.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{args.port}/healthz", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - t0 > 180:
                    print((tmp / "serve.log").read_text()[-3000:])
                    return 1
                time.sleep(0.1)
        start_s = time.monotonic() - t0
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="unused", timeout=300)
        runs = []
        for i in range(args.runs + 1):
            t = time.perf_counter()
            first = None
            n = 0
            usage = None
            text = []
            for ch in client.chat.completions.create(
                model=args.model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=args.max_tokens, stream=True, stream_options={"include_usage": True},
                temperature=0.8, seed=i,
            ):
                if ch.choices and ch.choices[0].delta.content:
                    first = first or time.perf_counter()
                    text.append(ch.choices[0].delta.content)
                if ch.usage:
                    usage = ch.usage
            end = time.perf_counter()
            n = usage.completion_tokens if usage else len(text)
            if i == 0:
                continue  # warm-up
            runs.append({"ttft_ms": ((first or end) - t) * 1000, "tokens": n,
                         "decode_tok_s": (n - 1) / (end - first) if first and n > 1 else 0.0,
                         "overall_tok_s": n / (end - t), "sample": "".join(text)[:160]})
            print(json.dumps(runs[-1]), flush=True)
        summary = {"start_to_ready_s": round(start_s, 2),
                   "median_decode_tok_s": round(statistics.median(r["decode_tok_s"] for r in runs), 1),
                   "median_overall_tok_s": round(statistics.median(r["overall_tok_s"] for r in runs), 1),
                   "median_ttft_ms": round(statistics.median(r["ttft_ms"] for r in runs), 1)}
        print(json.dumps(summary))
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
