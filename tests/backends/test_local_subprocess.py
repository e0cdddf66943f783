"""The local model server's child process as the gateway watches it: ready when ``/health`` answers, and
its load polled from ``/health`` off the request path without a log line per poll."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import pytest

from backends.local_subprocess import LocalServerProcess, SubprocessLocalBackend
from tests.support.net import free_port


def test_polling_the_servers_health_writes_no_log_line_per_poll(caplog: pytest.LogCaptureFixture) -> None:
    """The load poll runs every second for the gateway's lifetime: an INFO line each time (httpx logs every
    request) would bury the gateway's own log. Any server that answers /health stands in for the model's."""
    caplog.set_level(logging.DEBUG)
    port = free_port()
    server = LocalServerProcess([sys.executable, "-m", "backends.fake_provider", "--port", str(port)], port)
    server.start(startup_timeout_s=60)
    backend = SubprocessLocalBackend("local", server, load_poll_s=0.02)
    try:
        deadline = time.monotonic() + 10
        while not backend.load_signals() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # several more polls
        load = backend.load_signals()
        assert load["status"] == "ok" and "free_slots" in load, load
    finally:
        asyncio.run(backend.aclose())
    assert not server.running
    assert [r.getMessage() for r in caplog.records if "/health" in r.getMessage()] == []
