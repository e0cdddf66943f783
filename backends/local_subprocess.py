"""The local model in its own process: `hybridgate local-model serve` on a loopback port, reached through
the OpenAI-compatible backend.

On the GPU the engine's step loop and the gateway's event loop must not share a GIL (a step's Python
work — scheduling, metadata, sampling, detokenisation — would stall every connection the gateway
serves). `LocalServerProcess` starts the server on a free 127.0.0.1 port, waits until ``GET /health``
answers (or the process exits, or ``startup_timeout_s`` passes), and stops it when the gateway closes
its backends; on Linux the child also gets SIGTERM if the gateway dies without closing. The gateway talks
to it through `OpenAICompatibleBackend`, exactly as to any other OpenAI-shaped upstream. The router's load
signals (queue depth, free SSM slots) come from the server's ``/health``, polled on a background thread
off the request path; while it does not answer the backend reports nothing (unknown load). Those polls go
through the standard library's `http.client` (`_health`): no proxy from the environment for a loopback
server, and no per-request log line (httpx logs every request at INFO, a line a second in the gateway's
log).
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from backends.base import UpstreamCall, UpstreamResponse
from backends.openai_compatible import OpenAICompatibleBackend
from common.types import DeploymentConfig

__all__ = ["LocalServerProcess", "SubprocessLocalBackend"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _health(port: int, timeout_s: float = 1.0) -> tuple[int, dict[str, Any]] | None:
    """``GET /health`` of the server on 127.0.0.1:``port``: its status and JSON object, None while it does not
    answer with one."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        data = orjson.loads(resp.read())
    except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
        return None
    finally:
        conn.close()
    return (resp.status, data) if isinstance(data, dict) else None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent exits (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class LocalServerProcess:
    """A `hybridgate local-model serve` child process on a loopback port."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.argv = argv
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None  # the child's stderr (warnings and errors), read back if it fails to start

    @classmethod
    def for_deployment(cls, cfg: DeploymentConfig, checkpoint: Path) -> LocalServerProcess:
        port = _free_port()
        argv = [
            sys.executable, "-m", "local_model.cli", "serve",
            "--checkpoint", str(checkpoint),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--device", cfg.local_device,
            "--dtype", cfg.local_dtype,
            "--model-name", cfg.upstream_model,
            "--max-model-len", str(cfg.context_window),
            "--log-level", "warning",
        ]  # fmt: skip
        if cfg.max_concurrency:
            argv += ["--max-num-seqs", str(cfg.max_concurrency)]
        return cls(argv, port)

    def start(self, startup_timeout_s: float = 300.0) -> LocalServerProcess:
        """Start the server and block until it answers /health; raise RuntimeError if it does not."""
        # A file, not a pipe (nobody has to keep reading it); open for the child's lifetime, closed by stop().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"local model server exited with {code}: {err[-2000:]}")
            health = _health(self.port)
            if health is not None and health[0] == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"local model server did not become ready within {startup_timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stderr_tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters the child wrote to stderr (its warnings and errors) so far."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-chars:]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class SubprocessLocalBackend:
    """`Backend` for a local model served by a child `LocalServerProcess` (OpenAI-compatible HTTP)."""

    def __init__(self, name: str, server: LocalServerProcess, *, load_poll_s: float = 1.0) -> None:
        self.name = name
        self.server = server
        self.http = OpenAICompatibleBackend(name, f"{server.base_url}/v1")
        self._load: dict[str, Any] = {}
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_load, args=(load_poll_s,), name=f"{name}-load", daemon=True
        )
        self._poller.start()

    async def complete(self, call: UpstreamCall) -> UpstreamResponse:
        return await self.http.complete(call)

    def stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        return self.http.stream(call)

    def load_signals(self) -> dict[str, Any]:
        """The server's latest ``/health`` load (queue depth, free SSM slots ...); empty while unknown."""
        return dict(self._load)

    def _poll_load(self, interval_s: float) -> None:
        while not self._stop.is_set():
            health = _health(self.server.port)
            if health is None:
                self._load = {}
            else:
                data = health[1]
                data["free_slots"] = data.get("free_ssm_slots")
                self._load = data
            self._stop.wait(interval_s)

    async def aclose(self) -> None:
        self._stop.set()
        await self.http.aclose()
        self.server.stop()
