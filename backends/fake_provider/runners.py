"""Running a fake provider elsewhere: a thread (sync tests) or a subprocess (benchmarks, CLI)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from backends.fake_provider.faults import Fault
from backends.fake_provider.server import FakeProvider
from backends.fake_provider.wire import JSON

__all__ = ["FakeProviderProcess", "FakeProviderThread"]


class FakeProviderThread:
    """A FakeProvider on its own event loop in a daemon thread, for synchronous tests.

    ``with FakeProviderThread() as fp: requests.post(fp.base_url + "/chat/completions", …)``.
    Control methods run on the server's loop, so they are safe to call from the test thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> None:
        self._args = (host, port, kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.provider: FakeProvider | None = None

    def start(self) -> str:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                import uvloop

                loop = uvloop.new_event_loop()
            except ImportError:  # pragma: no cover - uvloop is a dependency
                loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            host, port, kwargs = self._args
            self.provider = FakeProvider(host, port, **kwargs)
            try:
                loop.run_until_complete(self.provider.start())
            except BaseException as exc:  # surfaced to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.provider.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-provider", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
            self._thread = None

    def __enter__(self) -> FakeProviderThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[[], Any]) -> Any:
        assert self._loop is not None, "not started"

        async def go() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    @property
    def _p(self) -> FakeProvider:
        assert self.provider is not None, "not started"
        return self.provider

    @property
    def url(self) -> str:
        return self._p.url

    @property
    def base_url(self) -> str:
        return self._p.base_url

    def set_faults(
        self, default: str | Fault | None = None, *, models: Mapping[str, str | Fault] | None = None
    ) -> None:
        self._call(lambda: self._p.set_faults(default, models=models))

    def fail_next(self, count: int, fault: str | Fault = "500", *, model: str | None = None) -> None:
        self._call(lambda: self._p.fail_next(count, fault, model=model))

    def clear_faults(self) -> None:
        self._call(self._p.clear_faults)

    @property
    def stats(self) -> dict[str, Any]:
        return self._call(lambda: self._p.stats)

    def reset_stats(self) -> None:
        self._call(self._p.reset_stats)

    def requests(self) -> list[Any]:
        """The recent requests as the provider saw them (`RecordedRequest`s)."""
        return self._call(lambda: self._p.requests)


class FakeProviderProcess:
    """The fake provider as a child process (``python -m backends.fake_provider``), driven over HTTP.

    Use for benchmarks (the upstream must not share the gateway's CPU/GIL) and tests that need
    a separate process. Port 0 picks a free port; the child reports it on its first stdout line.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, args: Sequence[str] = (), python: str = sys.executable
    ) -> None:
        self.host = host
        self.port = port
        self._cmd = [python, "-m", "backends.fake_provider", "--host", host, "--port", str(port), *args]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> str:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, cwd=root, env=env)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if line.startswith(b"FAKE_PROVIDER_LISTENING "):
                self.port = int(line.split()[1].rsplit(b":", 1)[1])
                return self.base_url
            if not line and self._proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"fake provider did not start (last output {line!r})")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> FakeProviderProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def _control(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else orjson.dumps(payload)
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": JSON}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return orjson.loads(resp.read())

    def set_faults(self, default: str | None = None, *, models: Mapping[str, str] | None = None) -> None:
        self._control("POST", "/_control/faults", {"default": default, "models": dict(models or {})})

    def fail_next(self, count: int, fault: str = "500", *, model: str | None = None) -> None:
        self._control(
            "POST", "/_control/faults", {"fail_next": {"count": count, "fault": fault, "model": model}}
        )

    def clear_faults(self) -> None:
        self._control("DELETE", "/_control/faults")

    @property
    def stats(self) -> dict[str, Any]:
        return self._control("GET", "/_control/stats")

    def reset_stats(self) -> None:
        self._control("POST", "/_control/stats/reset", {})
