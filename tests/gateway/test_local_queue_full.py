"""A full local-model queue is busy, not broken: the requests it turns away get a 503 with Retry-After
(as the local server itself answers), and the local deployment's circuit breaker stays closed, so the
model serves again as soon as its queue drains, also where it is the only deployment."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from backends.local_backend import LocalBackend
from local_model.engine import Engine, EngineConfig
from tests.support.gateway import MSG, settings
from tests.support.harness import running_gateway
from tests.support.shipped import needs_shipped, shipped_checkpoint
from tests.support.wait import wait_until

pytestmark = needs_shipped


def test_a_full_local_queue_answers_busy_and_leaves_the_breaker_closed(tmp_path: Path, sqlite_url: str) -> None:
    ckpt = shipped_checkpoint()
    assert ckpt is not None
    # one running sequence and one queued request fill the engine; the breaker would open on 2 failures
    engine = Engine.from_checkpoint(ckpt, EngineConfig(memory_budget_mb=32, max_num_seqs=1, max_queue=1,
                                                       max_model_len=512, retry_after_s=0.05),
                                    model_name="hybridgate-local")
    backend = LocalBackend(engine, name="local")
    local = {"name": "local", "model": "hybridgate-local", "provider": "local", "upstream_model": str(ckpt),
             "context_window": 512, "timeout_s": 60, "pricing": {"input_per_mtok": 0.0, "output_per_mtok": 0.0},
             "capabilities": ["chat", "completion"], "tags": ["local"]}
    s = settings(tmp_path, sqlite_url, [local],
                 breaker={"consecutive_failures": 2, "min_requests": 100, "cooldown_s": 60, "window_s": 30})
    with running_gateway(s, backends={"local": backend}) as gw, httpx.Client(timeout=60) as http:
        url = gw.base_url + "/v1/chat/completions"
        running = {"model": "hybridgate-local", "messages": MSG, "max_tokens": 480, "ignore_eos": True,
                   "stream": True}
        queued: dict[str, Any] = {}

        def wait_in_queue() -> None:
            with httpx.Client(timeout=60) as own:
                queued["status"] = own.post(url, json={"model": "hybridgate-local", "messages": MSG,
                                                       "max_tokens": 1}).status_code

        with http.stream("POST", url, json=running) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # held open (unread) while the rest runs: dropping it hangs up
            next(lines)
            wait_until(lambda: engine.load_signals().running == 1, 10, what="the first request admitted")
            behind = threading.Thread(target=wait_in_queue, daemon=True)
            behind.start()
            wait_until(lambda: engine.load_signals().queue_depth == 1, 10, what="the second request queued")
            for model in ("hybridgate-local", "auto", "hybridgate-local"):
                r = http.post(url, json={"model": model, "messages": MSG, "max_tokens": 4})
                assert r.status_code == 503, (model, r.text)
                assert r.json()["error"]["code"] == "model_overloaded" and r.headers["retry-after"] == "1"
            states = gw.call(gw.services.router.breakers.states(["local"]))
            assert states.get("local", "closed") == "closed"
        behind.join(60)
        assert queued["status"] == 200
        # the queue has drained: served at once, not refused for the breaker's cooldown
        ok = http.post(url, json={"model": "hybridgate-local", "messages": MSG, "max_tokens": 4})
        assert ok.status_code == 200, ok.text
        ok = http.post(url, json={"model": "auto", "messages": MSG, "max_tokens": 4})
        assert ok.status_code == 200, ok.text
