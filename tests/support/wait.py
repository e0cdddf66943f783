"""Bounded waits for a condition that another thread or process makes true (instead of fixed sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float = 5.0, what: str = "condition",
               interval_s: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} (waited {timeout_s} s)"
        time.sleep(interval_s)
    return value


async def await_until(check: Callable[[], T | Awaitable[T]], timeout_s: float = 5.0, what: str = "condition",
                      interval_s: float = 0.02) -> T:
    """``wait_until`` for a running event loop: ``check`` may be a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value  # type: ignore[misc]
        if value:
            return value  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"{what} (waited {timeout_s} s)"
        await asyncio.sleep(interval_s)


def wait_for_healthz(proc: subprocess.Popen, port: int, timeout_s: float, output: Callable[[], object]) -> None:
    """Poll ``http://127.0.0.1:<port>/healthz`` of a `serve` subprocess until it answers; fail with
    ``output()`` (its log so far) if the process exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return
        assert proc.poll() is None and time.monotonic() < deadline, output()
        time.sleep(0.1)
