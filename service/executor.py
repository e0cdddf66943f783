"""Run a routing decision: attempts, retries, fallbacks, breaker updates.

The router decides *which* deployments to try and in what order, and `router.retry.on_error`
decides what a failure means (both pure); this module does the I/O of trying them. It owns the
rules a client can observe:
- a retryable failure is retried on the same deployment (backoff with jitter, honouring
  Retry-After) while the policy allows and its breaker admits (asked before every attempt), else
  the next deployment in the chain is tried; with none admitted at all the client gets a 503
  ("no_deployment") with Retry-After;
- a stream that fails before its first chunk falls back invisibly; after the first chunk the
  client gets an error event and never a second answer spliced onto the first;
- every try becomes one AttemptRow, so the log shows exactly what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from backends.base import Backend, UpstreamCall, UpstreamError, UpstreamResponse, Usage, usage_fields
from common.types import DeploymentConfig, RetrySettings
from requestlog.rows import AttemptRow
from router.breaker import Admission
from router.retry import attempt_timeout, on_error

DEFAULT_TRIGGERS = frozenset({"timeout", "rate_limit", "overloaded", "server_error", "connection", "context_window",
                              "stream_cut", "malformed"})


class Outcomes(Protocol):
    """Where attempt outcomes go (circuit breakers, latency EWMA, in-flight counts).

    ``started`` and ``finished`` bracket every attempt, ``finished`` on every path out of it (an
    answer, an error, a timeout, a cancelled or abandoned stream), so in-flight counts never leak.
    ``record`` and ``release`` get the ``probe`` of the attempt's `Admission` (the half-open probe
    slot it took, if any), so they give back that slot and no other.
    """

    async def allow(self, deployment: str) -> Admission: ...

    async def record(
        self, deployment: str, ok: bool, latency_s: float, error_kind: str | None, probe: str | None
    ) -> None: ...

    async def release(self, deployment: str, probe: str | None) -> None:
        """An attempt `allow` admitted ended with no outcome (cancelled): give back what it took."""
        ...

    async def retry_after_s(self, deployments: list[str]) -> float:
        """How long a client refused because none of ``deployments`` admitted an attempt should wait:
        until the first of their breakers goes half-open."""
        ...

    def started(self, deployment: str) -> None: ...

    def finished(self, deployment: str) -> None: ...


class _AllowAll:
    async def allow(self, deployment: str) -> Admission:
        return Admission(True)

    async def record(
        self, deployment: str, ok: bool, latency_s: float, error_kind: str | None, probe: str | None
    ) -> None:
        return None

    async def release(self, deployment: str, probe: str | None) -> None:
        return None

    async def retry_after_s(self, deployments: list[str]) -> float:
        return NO_DEPLOYMENT_RETRY_S

    def started(self, deployment: str) -> None:
        return None

    def finished(self, deployment: str) -> None:
        return None


Pricer = Callable[[DeploymentConfig, Usage], float]
CallFactory = Callable[[DeploymentConfig, float], UpstreamCall]  # (deployment, attempt timeout) -> call


@dataclass(slots=True)
class Target:
    deployment: DeploymentConfig
    backend: Backend


@dataclass(frozen=True, slots=True)
class _Try:
    """One attempt the executor makes: where, within what time, and what its breaker admitted
    (the half-open probe slot it took is given back with the attempt's outcome)."""

    target: Target
    timeout_s: float
    admission: Admission


@dataclass(slots=True)
class Plan:
    """What the executor needs from a routing decision."""

    targets: list[Target]
    retry: RetrySettings = field(default_factory=RetrySettings)
    triggers: frozenset[str] = DEFAULT_TRIGGERS


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
    prompt_estimate: int = 0  # the gateway's count of the prompt, for a partial answer the upstream never sized


def usage_from(chunk: dict[str, Any]) -> Usage | None:
    """The usage a stream chunk reports: a chat chunk's `usage`, or the `response.usage` of a Responses
    API stream's last event (streams passed through to an upstream that speaks Responses)."""
    obj = chunk.get("usage")
    if not obj:
        resp = chunk.get("response")
        obj = resp.get("usage") if isinstance(resp, dict) else None
        if not obj:
            return None
    return usage_fields(obj)


class _Cursor:
    """Walks the plan's targets: which one is next, and how many tries it has had."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.i = 0
        self.here = 0

    @property
    def current(self) -> Target | None:
        return self.plan.targets[self.i] if self.i < len(self.plan.targets) else None

    def next_index(self, kind: str) -> int | None:
        """Index of the next target to fall to; a context-window failure only moves to a larger window."""
        cur = self.plan.targets[self.i].deployment
        for j in range(self.i + 1, len(self.plan.targets)):
            if kind != "context_window" or self.plan.targets[j].deployment.context_window > cur.context_window:
                return j
        return None

    def advance(self, to: int | None = None) -> None:
        self.i = self.i + 1 if to is None else to
        self.here = 0


# How long a client refused for want of a deployment is told to wait (Retry-After) when no breaker
# says how long (every one forced open, or no breaker involved): long enough for a half-open probe to
# report.
NO_DEPLOYMENT_RETRY_S = 1.5


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
        self._outcomes: Outcomes = outcomes or _AllowAll()
        self._rng = rng or random.Random()
        self._sleep = sleep

    def _attempt_row(self, ex: Execution, t: Target) -> AttemptRow:
        d = t.deployment
        row = AttemptRow(
            id=f"{ex.request_id}-{len(ex.attempts)}", request_id=ex.request_id, attempt_no=len(ex.attempts),
            deployment=d.name, provider=d.provider, upstream_model=d.upstream_model, started_at=datetime.now(UTC),
        )
        ex.attempts.append(row)
        return row

    async def _fail(self, row: AttemptRow, err: UpstreamError, t0: float, attempt: _Try) -> None:
        target = attempt.target
        if err.deployment is None:
            err.deployment = target.deployment.name  # the client's error names it (gateway.errors.from_upstream)
        row.status = "error"
        row.latency_ms = (time.perf_counter() - t0) * 1000
        row.http_status = err.status
        row.error_type = err.kind
        row.error_message = err.message[:500]
        await self._outcomes.record(target.deployment.name, False, time.perf_counter() - t0, err.kind,
                                    attempt.admission.probe)

    async def _succeed(
        self, ex: Execution, row: AttemptRow, attempt: _Try, usage: Usage, t0: float, status: int = 200
    ) -> None:
        """The attempt answered: its row gets the upstream's HTTP status (a stream's is 200: it began),
        latency, usage and price, and the breaker a success."""
        t = attempt.target
        latency = time.perf_counter() - t0
        row.http_status = status
        row.latency_ms = latency * 1000
        row.prompt_tokens = usage.prompt_tokens
        row.completion_tokens = usage.completion_tokens
        row.cost_usd = self._price(t.deployment, usage)
        ex.served, ex.usage, ex.cost_usd = t, usage, row.cost_usd
        await self._outcomes.record(t.deployment.name, True, latency, None, attempt.admission.probe)

    def _bill_partial(self, ex: Execution, row: AttemptRow, t: Target, usage: Usage | None, chars: int) -> None:
        """A stream that ended after its first chunk (cut upstream, or the client left) was produced, and
        is billed by its provider: the usage the upstream reported, else the gateway's prompt count and
        about four characters a token of the text sent. The attempt and the request (its row, its budget
        settlement) carry it."""
        usage = usage or Usage(ex.prompt_estimate, chars // 4)
        row.prompt_tokens, row.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        row.cost_usd = self._price(t.deployment, usage)
        ex.usage, ex.cost_usd = usage, row.cost_usd

    async def _no_deployment(self, plan: Plan) -> UpstreamError:
        """No attempt was made: every target's breaker refused (open, or half-open with its probe slots
        taken). The client's 503 with Retry-After (`gateway.errors.from_upstream`) until the first of
        their breakers goes half-open, as for a policy whose candidates are all open; never a 502 that
        blames an upstream nobody called."""
        why = "no deployment available (all circuit breakers open)"
        wait = await self._outcomes.retry_after_s([t.deployment.name for t in plan.targets])
        return UpstreamError("no_deployment", why, reason=why, retry_after_s=wait)

    async def _release(self, attempt: _Try) -> None:
        """A cancelled attempt has no outcome for the breaker: it only gives back a half-open probe
        slot it took (else held until the probe timeout). Best effort: the cancellation goes on."""
        with contextlib.suppress(Exception):
            await self._outcomes.release(attempt.target.deployment.name, attempt.admission.probe)

    async def _attempts(self, plan: Plan, ex: Execution, started: float) -> AsyncIterator[_Try]:
        """Yield the attempts in the order to make them; after each failed try (recorded in ex.error)
        ask the retry policy whether to retry here, fall to the next target, or stop."""
        cur = _Cursor(plan)
        retrying: str | None = None  # the kind of failure a retry on the current target follows
        while (t := cur.current) is not None:
            # The request's time left is checked first, so an attempt that cannot be made never takes
            # a half-open probe slot it would not give back.
            timeout = attempt_timeout(plan.retry, time.monotonic() - started, t.deployment.timeout_s)
            if timeout <= 0:
                return
            # The breaker is asked before every attempt, retries included: failures here may just
            # have opened it (or a half-open probe failed), and an open breaker gets no traffic.
            admission = await self._outcomes.allow(t.deployment.name)
            if not admission.allowed:
                if cur.here and retrying not in plan.triggers:
                    return  # the policy does not fall back on this kind of failure: the client gets it
                cur.advance()  # breaker open (or no half-open probe slot left): skip it
                retrying = None
                continue
            cur.here += 1
            ex.error = None
            yield _Try(t, timeout, admission)
            err = ex.error
            if err is None:
                return
            nxt = cur.next_index(err.kind)
            action = on_error(
                err.kind, settings=plan.retry, triggers=plan.triggers, first_token_sent=False,
                attempts_total=len(ex.attempts), attempts_here=cur.here, has_next=nxt is not None,
                elapsed_s=time.monotonic() - started, rng=self._rng, retry_after_s=err.retry_after_s,
            )
            if action.outcome == "fail":
                return
            if action.outcome == "fall_to_next":
                cur.advance(nxt)
                retrying = None
            else:
                retrying = err.kind
                if action.delay_s > 0:
                    await self._sleep(action.delay_s)

    async def complete(self, ex: Execution, plan: Plan, make_call: CallFactory) -> UpstreamResponse:
        """Non-streamed: the first successful response, or raises the last UpstreamError."""
        async for attempt in self._attempts(plan, ex, time.monotonic()):
            t = attempt.target
            t0 = time.perf_counter()
            row = self._attempt_row(ex, t)
            self._outcomes.started(t.deployment.name)
            try:
                resp = await t.backend.complete(make_call(t.deployment, attempt.timeout_s))
            except UpstreamError as err:
                ex.error = err
                await self._fail(row, err, t0, attempt)
                continue
            except asyncio.CancelledError:
                row.status = "cancelled"
                row.latency_ms = (time.perf_counter() - t0) * 1000
                await self._release(attempt)
                raise
            finally:
                self._outcomes.finished(t.deployment.name)
            await self._succeed(ex, row, attempt, resp.usage, t0, resp.status)
            return resp
        raise ex.error or await self._no_deployment(plan)

    async def stream(self, ex: Execution, plan: Plan, make_call: CallFactory) -> AsyncIterator[dict[str, Any]]:
        """Streamed: chunks of the first deployment that produces one.

        Failures before the first chunk fall through to the next try; after it, the error is raised
        to the caller (which sends an error event) with `ex.served` set to the target that failed.
        """
        async for attempt in self._attempts(plan, ex, time.monotonic()):
            t = attempt.target
            t0 = time.perf_counter()
            row = self._attempt_row(ex, t)
            usage: Usage | None = None
            first = True
            completion_chars = 0
            self._outcomes.started(t.deployment.name)
            try:
                agen = t.backend.stream(make_call(t.deployment, attempt.timeout_s))
            except BaseException:
                self._outcomes.finished(t.deployment.name)
                raise
            try:
                async for chunk in agen:
                    if first:
                        first = False
                        ex.ttft_s = time.perf_counter() - t0
                        row.ttft_ms = ex.ttft_s * 1000
                        ex.served = t
                    u = usage_from(chunk)
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
                await self._fail(row, err, t0, attempt)
                if not first:
                    self._bill_partial(ex, row, t, usage, completion_chars)
                    raise
                continue
            except (asyncio.CancelledError, GeneratorExit):
                row.status = "cancelled"
                row.latency_ms = (time.perf_counter() - t0) * 1000
                if not first:
                    self._bill_partial(ex, row, t, usage, completion_chars)
                await self._release(attempt)
                raise
            finally:
                try:
                    await agen.aclose()
                finally:
                    self._outcomes.finished(t.deployment.name)
            if first:  # an empty stream is a failure: nothing was sent, so fall back
                err = UpstreamError("stream_cut", "upstream stream ended without any chunk")
                ex.error = err
                await self._fail(row, err, t0, attempt)
                continue
            await self._succeed(ex, row, attempt, usage or Usage(0, completion_chars // 4), t0)
            return
        raise ex.error or await self._no_deployment(plan)

