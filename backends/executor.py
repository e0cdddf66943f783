"""Run a routing decision: attempts, retries, fallbacks, breaker updates.

The router decides *which* deployments to try and in what order (pure); this module does the
I/O of trying them. It owns the rules a client can observe:
- a retryable failure is retried on the same deployment (backoff with jitter, honouring
  Retry-After) up to the policy's limit, then the next deployment in the chain is tried;
- a stream that fails before its first chunk falls back invisibly; after the first chunk the
  client gets an error event and never a second answer spliced onto the first;
- every try becomes one AttemptRow, so the log shows exactly what happened.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from backends.base import Backend, UpstreamCall, UpstreamError, UpstreamResponse, Usage
from backends.deployment import DeploymentConfig
from requestlog.rows import AttemptRow


@dataclass(slots=True)
class RetrySettings:
    max_attempts_per_deployment: int = 2
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0
    max_retry_after_s: float = 10.0  # a Retry-After longer than this moves on to the next deployment
    total_deadline_s: float = 120.0
    fallback_on: frozenset[str] = frozenset(
        {"timeout", "rate_limit", "server_error", "connection", "context_window", "content_policy", "stream_cut",
         "malformed", "auth", "not_found"}
    )


class Outcomes(Protocol):
    """Where attempt outcomes go (breakers, latency EWMA, metrics). Implemented by the gateway."""

    def allow(self, deployment: str) -> bool: ...

    def record(self, deployment: str, ok: bool, latency_s: float, error_kind: str | None) -> None: ...


class _AllowAll:
    def allow(self, deployment: str) -> bool:
        return True

    def record(self, deployment: str, ok: bool, latency_s: float, error_kind: str | None) -> None:
        return None


Pricer = Callable[[DeploymentConfig, Usage], float]


@dataclass(slots=True)
class Target:
    deployment: DeploymentConfig
    backend: Backend


@dataclass
class Execution:
    """What happened: the attempts, and which target answered (None when all failed)."""

    request_id: str
    attempts: list[AttemptRow] = field(default_factory=list)
    served: Target | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    ttft_s: float | None = None
    error: UpstreamError | None = None


def usage_from(obj: dict[str, Any] | None) -> Usage | None:
    if not obj:
        return None
    return Usage(int(obj.get("prompt_tokens") or 0), int(obj.get("completion_tokens") or 0))


class Executor:
    """Tries targets in order. One instance per app; stateless between requests."""

    def __init__(
        self,
        pricer: Pricer,
        outcomes: Outcomes | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._price = pricer
        self._outcomes = outcomes or _AllowAll()
        self._rng = rng or random.Random()
        self._sleep = sleep

    def _backoff(self, n: int, retry: RetrySettings, err: UpstreamError) -> float | None:
        """Seconds to wait before retrying the same deployment, or None to move on."""
        if err.retry_after_s is not None:
            return err.retry_after_s if err.retry_after_s <= retry.max_retry_after_s else None
        cap = min(retry.backoff_max_s, retry.backoff_base_s * (2**n))
        return self._rng.uniform(0, cap)  # full jitter

    def _attempt_row(self, ex: Execution, t: Target, started: datetime) -> AttemptRow:
        d = t.deployment
        row = AttemptRow(
            id=f"{ex.request_id}-{len(ex.attempts)}",
            request_id=ex.request_id,
            attempt_no=len(ex.attempts),
            deployment=d.name,
            provider=d.provider,
            upstream_model=d.upstream_model,
            started_at=started,
        )
        ex.attempts.append(row)
        return row

    def _fail(self, row: AttemptRow, err: UpstreamError, t0: float, target: Target) -> None:
        row.status = "error"
        row.latency_ms = (time.perf_counter() - t0) * 1000
        row.http_status = err.status
        row.error_type = err.kind
        row.error_message = err.message[:500]
        self._outcomes.record(target.deployment.name, False, time.perf_counter() - t0, err.kind)

    def _succeed(self, ex: Execution, row: AttemptRow, t: Target, usage: Usage, t0: float) -> None:
        latency = time.perf_counter() - t0
        row.latency_ms = latency * 1000
        row.prompt_tokens = usage.prompt_tokens
        row.completion_tokens = usage.completion_tokens
        row.cost_usd = self._price(t.deployment, usage)
        ex.served, ex.usage, ex.cost_usd = t, usage, row.cost_usd
        self._outcomes.record(t.deployment.name, True, latency, None)

    async def _plan(
        self, targets: Sequence[Target], retry: RetrySettings, ex: Execution
    ) -> AsyncIterator[tuple[Target, int]]:
        """Yield (target, try number) in the order to attempt, sleeping between retries."""
        deadline = time.monotonic() + retry.total_deadline_s
        for t in targets:
            if not self._outcomes.allow(t.deployment.name):
                continue
            for n in range(retry.max_attempts_per_deployment):
                if time.monotonic() >= deadline:
                    return
                yield t, n
                err = ex.error
                if err is None or not err.retryable:
                    break
                wait = self._backoff(n, retry, err)
                if wait is None or n + 1 >= retry.max_attempts_per_deployment:
                    break
                if time.monotonic() + wait >= deadline:
                    return
                await self._sleep(wait)
            if ex.error is not None and ex.error.kind not in retry.fallback_on:
                return

    async def complete(
        self, ex: Execution, targets: Sequence[Target], make_call: Callable[[DeploymentConfig], UpstreamCall],
        retry: RetrySettings,
    ) -> UpstreamResponse:
        """Non-streamed: the first successful response, or raises the last UpstreamError."""
        async for t, _n in self._plan(targets, retry, ex):
            started = datetime.now(UTC)
            t0 = time.perf_counter()
            row = self._attempt_row(ex, t, started)
            try:
                resp = await t.backend.complete(make_call(t.deployment))
            except UpstreamError as err:
                ex.error = err
                self._fail(row, err, t0, t)
                continue
            except asyncio.CancelledError:
                row.status = "cancelled"
                row.latency_ms = (time.perf_counter() - t0) * 1000
                raise
            ex.error = None
            self._succeed(ex, row, t, resp.usage, t0)
            return resp
        raise ex.error or UpstreamError("connection", "no deployment available (all circuit breakers open)")

    async def stream(
        self, ex: Execution, targets: Sequence[Target], make_call: Callable[[DeploymentConfig], UpstreamCall],
        retry: RetrySettings,
    ) -> AsyncIterator[dict[str, Any]]:
        """Streamed: chunks of the first deployment that produces one.

        Failures before the first chunk fall through to the next try; after it, the error is raised
        to the caller (which sends an error event) with `ex.served` set to the target that failed.
        """
        async for t, _n in self._plan(targets, retry, ex):
            started = datetime.now(UTC)
            t0 = time.perf_counter()
            row = self._attempt_row(ex, t, started)
            usage: Usage | None = None
            first = True
            completion_chars = 0
            agen = t.backend.stream(make_call(t.deployment))
            try:
                async for chunk in agen:
                    if first:
                        first = False
                        ex.ttft_s = time.perf_counter() - t0
                        row.ttft_ms = ex.ttft_s * 1000
                        ex.served = t
                    u = usage_from(chunk.get("usage"))
                    if u is not None:
                        usage = u
                    for c in chunk.get("choices") or ():
                        delta = c.get("delta") or c
                        text = delta.get("content") or delta.get("text")
                        if text:
                            completion_chars += len(text)
                    yield chunk
            except UpstreamError as err:
                ex.error = err
                self._fail(row, err, t0, t)
                if not first:
                    raise
                continue
            except (asyncio.CancelledError, GeneratorExit):
                row.status = "cancelled"
                row.latency_ms = (time.perf_counter() - t0) * 1000
                if usage is None:
                    usage = Usage(0, completion_chars // 4)
                row.completion_tokens = usage.completion_tokens
                raise
            finally:
                await agen.aclose()
            if first:  # an empty stream is a failure: nothing was sent, so fall back
                err = UpstreamError("stream_cut", "upstream stream ended without any chunk")
                ex.error = err
                self._fail(row, err, t0, t)
                continue
            ex.error = None
            self._succeed(ex, row, t, usage or Usage(0, completion_chars // 4), t0)
            return
        raise ex.error or UpstreamError("connection", "no deployment available (all circuit breakers open)")
