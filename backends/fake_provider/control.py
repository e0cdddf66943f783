"""Controlling and observing a running fake provider: faults, counters, recorded requests.

Programmatic (`set_faults`, `fail_next`, `clear_faults`, `stats`, `reset_stats`, `requests`) and
over HTTP (JSON): ``GET /_control/stats``, ``POST /_control/stats/reset``,
``GET|POST|DELETE /_control/faults``, ``GET /_control/requests`` (recent request bodies),
``GET /health``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from backends.fake_provider.config import RecordedRequest
from backends.fake_provider.core import ProviderCore
from backends.fake_provider.errors import Reject, error_response
from backends.fake_provider.faults import Fault, FaultSpecError, FaultState, parse_fault
from backends.fake_provider.wire import JSON


class ControlHandlers(ProviderCore):
    """Fault control, counters and the ``/_control`` + ``/health`` handlers of `FakeProvider`."""

    # -- programmatic control -------------------------------------------------------------------

    def set_faults(
        self, default: str | Fault | None = None, *, models: Mapping[str, str | Fault] | None = None
    ) -> None:
        """Replace the server-wide faults: `default` for every request, `models[m]` for model m.

        ``set_faults()`` clears them (a pending `fail_next` is kept; `clear_faults` drops it too).
        """
        state = FaultState(
            default=parse_fault(default),
            per_model={m: parse_fault(s) for m, s in (models or {}).items()} or None,
            fail_next_count=self._faults.fail_next_count,
            fail_next_fault=self._faults.fail_next_fault,
            fail_next_model=self._faults.fail_next_model,
        )
        self._faults = state

    def fail_next(self, count: int, fault: str | Fault = "500", *, model: str | None = None) -> None:
        """Make the next `count` model requests (for `model`, if given) fail with `fault`, then recover."""
        if count < 0:
            raise ValueError("count must be >= 0")
        parsed = parse_fault(fault)
        self._faults.fail_next_fault = parsed
        self._faults.fail_next_model = model
        self._faults.fail_next_count = count

    def clear_faults(self) -> None:
        self._faults = FaultState()

    @property
    def faults(self) -> dict[str, Any]:
        return self._faults.describe()

    @property
    def stats(self) -> dict[str, Any]:
        """Snapshot of the counters (same shape as ``GET /_control/stats``)."""
        return {
            "total": self._total,
            "streams": self._streams,
            "faults_injected": self._faults_injected,
            "in_flight": self._in_flight,
            "max_in_flight": self._max_in_flight,
            "by_path": dict(self._by_path),
            "by_model": dict(self._by_model),
            "by_path_model": {p: dict(m) for p, m in self._by_path_model.items()},
        }

    def reset_stats(self) -> None:
        self._total = 0
        self._streams = 0
        self._faults_injected = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._by_path: dict[str, int] = {}
        self._by_model: dict[str, int] = {}
        self._by_path_model: dict[str, dict[str, int]] = {}
        self._recent.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """The most recent model requests (oldest first), bodies parsed."""
        return list(self._recent)

    # -- health, control endpoints --------------------------------------------------------------

    async def _health(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON)

    async def _ctl_stats(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(self.stats), content_type=JSON)

    async def _ctl_stats_reset(self, request: web.BaseRequest) -> web.StreamResponse:
        self.reset_stats()
        return web.Response(body=b'{"ok":true}', content_type=JSON)

    async def _ctl_faults_get(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(self.faults), content_type=JSON)

    async def _ctl_faults_delete(self, request: web.BaseRequest) -> web.StreamResponse:
        self.clear_faults()
        return web.Response(body=orjson.dumps(self.faults), content_type=JSON)

    async def _ctl_faults_post(self, request: web.BaseRequest) -> web.StreamResponse:
        """Body: {"clear": bool, "default": spec|null, "models": {m: spec}, "fail_next": {"count", "fault", "model"}}.

        Keys left out keep their current value; "clear": true starts from no faults.
        """
        try:
            data = orjson.loads(await request.read())
            if not isinstance(data, dict):
                raise FaultSpecError("body must be a JSON object")
            if data.get("clear"):
                self.clear_faults()
            if "default" in data or "models" in data:
                cur = self._faults
                self.set_faults(
                    data.get("default", cur.default),
                    models=data.get("models", cur.per_model),
                )
            if "fail_next" in data:
                fn = data["fail_next"] or {}
                self.fail_next(int(fn.get("count", 1)), fn.get("fault", "500"), model=fn.get("model"))
        except (FaultSpecError, ValueError, TypeError) as exc:
            return error_response("openai", Reject(400, f"bad fault request: {exc}"))
        return web.Response(body=orjson.dumps(self.faults), content_type=JSON)

    async def _ctl_requests(self, request: web.BaseRequest) -> web.StreamResponse:
        items = [
            {
                "method": r.method,
                "path": r.path,
                "model": r.model,
                "body": r.body,
                "headers": {str(k).lower(): v for k, v in r.headers.items()},
            }
            for r in self._recent
        ]
        return web.Response(body=orjson.dumps(items), content_type=JSON)
