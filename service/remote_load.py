"""Load of self-hosted models: in-process engines, and servers reached over HTTP (our local-model
server, in its own container).

The router decides on a signals snapshot that includes each local deployment's queue depth and
free slots. In-process engines report theirs directly; a model server reached over HTTP is polled
here (its `/health` carries the engine's load) once per interval, off the request path, and the
latest answer is what the next decisions see. An unreachable server reports nothing (unknown),
which the router treats as "no information" rather than as idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

import aiohttp

from common.errors import error_text
from common.types import DeploymentConfig
from router.signals import LocalLoad

log = logging.getLogger("hybridgate.remote_load")


def engine_load(backends: Mapping[str, object]) -> dict[str, LocalLoad]:
    """Queue depth and free slots of the in-process engines among ``backends`` (those that report
    ``load_signals``), for the router's signals snapshot."""
    out = {}
    for name, b in backends.items():
        signals = getattr(b, "load_signals", None)
        if signals is not None:
            sig = signals()
            out[name] = LocalLoad(queue_depth=int(sig.get("queue_depth", 0)), free_slots=sig.get("free_slots"))
    return out


def health_url(api_base: str) -> str:
    base = api_base.rstrip("/")
    return (base[: -len("/v1")] if base.endswith("/v1") else base) + "/health"


class RemoteLoadPoller:
    """Latest load of every `openai_compatible` deployment tagged ``local``."""

    def __init__(self, deployments: Sequence[DeploymentConfig], timeout_s: float = 1.0) -> None:
        self.urls = {d.name: health_url(d.api_base) for d in deployments
                     if d.provider == "openai_compatible" and d.api_base and "local" in d.tags}
        self.latest: dict[str, LocalLoad] = {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        for name, url in self.urls.items():
            try:
                async with session.get(url) as r:
                    data = await r.json(content_type=None)
                free = data.get("free_slots", data.get("free_ssm_slots"))
                self.latest[name] = LocalLoad(queue_depth=int(data.get("queue_depth") or 0),
                                              free_slots=int(free) if free is not None else None)
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError, TypeError):
                self.latest.pop(name, None)

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        if not self.urls:
            return
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while not stop.is_set():
                try:
                    await self.poll_once(session)
                except Exception as exc:  # keep polling whatever happens
                    log.warning("remote load poll failed: %s", error_text(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval_s)
