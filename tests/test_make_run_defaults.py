"""What `make run` serves: the embedded defaults (SQLite log, in-process state, the shipped local
model on the CPU), reached by the official openai SDK with no key and no config file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

from tests.support.net import free_port
from tests.support.shipped import needs_shipped

ROOT = Path(__file__).resolve().parents[1]



@needs_shipped
def test_default_gateway_answers_chat_and_stream_from_the_local_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDGATE_")}
    hg = str(Path(sys.executable).parent / "hybridgate")
    subprocess.run([hg, "migrate"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([hg, "serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError((tmp_path / "serve.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        assert "WITHOUT gateway API keys" in (tmp_path / "serve.log").read_text()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        ids = {m.id for m in client.models.list()}
        assert {"hybridgate-local", "auto"} <= ids
        r = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=16)
        resp = r.parse()
        assert resp.choices[0].message.content
        assert r.headers["x-hybridgate-model"] == "hybridgate-local"  # the default policy routes locally
        assert r.headers["x-hybridgate-policy"].startswith("auto@")
        chunks = list(client.chat.completions.create(
            model="hybridgate-local", messages=[{"role": "user", "content": "Hello!"}], max_tokens=12,
            stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        assert (tmp_path / "hybridgate.db").exists()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
