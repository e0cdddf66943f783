"""How `hybridgate serve` ends: Ctrl-C (SIGINT) and `kill` (SIGTERM) alike run the orderly shutdown (the
app's lifespan ends: request log flushed, local model stopped), and then the process ends by that signal,
with nothing else on stderr: no traceback, and no report of the interpreter's teardown (where the native
modules the local model loaded, triton's nanobind bindings, list dozens of "leaked" objects)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port
from tests.support.shipped import needs_shipped
from tests.support.wait import wait_for_healthz


@needs_shipped
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_ends_by_the_signal_after_an_orderly_shutdown_and_says_nothing_more(
        tmp_path: Path, sqlite_url: str, sig: signal.Signals) -> None:
    port = free_port()
    (tmp_path / "c.yaml").write_text(f"database_url: {sqlite_url}\nlog: {{spool_dir: {tmp_path / 'spool'}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDGATE_")}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(tmp_path / "c.yaml"), "serve",
                             "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_healthz(proc, port, 120, lambda: proc.communicate(timeout=30))
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
            "model": "hybridgate-local", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8})
        assert r.status_code == 200 and r.headers["x-hybridgate-model"] == "hybridgate-local", r.text
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -sig, (proc.returncode, err[-3000:])  # a shell shows 128 + the signal's number
    assert "Application shutdown complete." in err, err[-3000:]
    assert err.rstrip().endswith(f"Finished server process [{proc.pid}]"), err[-3000:]
    assert "leaked" not in err and "Traceback" not in err, err[-3000:]
