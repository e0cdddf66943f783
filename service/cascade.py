"""Cascades: judge the first (cheap) answer, then keep it or ask the stronger model.

The router decides who answers first, who next, the score and the threshold (`EscalationPlan`); the
score itself is `router.escalation.confidence` (mean token log-probability, or a trained answer
verifier). Here the two meet: a `Verdict` per first answer, and `Cascades` runs the attempts, for
whole answers (`complete`) and for streamed ones (`stream`: the first answer is held back up to the
policy's ``stream_buffer_chars`` and judged before anything reaches the client). For streamed requests, `StreamedAnswer`
collects the first answer's chunks into the body the score reads.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from backends.base import UpstreamError, UpstreamResponse
from router.decision import EscalationPlan
from router.escalation import confidence
from router.protocols import Plugins, Verifier
from service.executor import CallFactory, Execution, Executor, Plan
from service.metrics import Metrics
from service.routing import Catalog, Route

Outcome = Literal["kept", "escalate", "no_confidence"]


@dataclass(slots=True, frozen=True)
class Verdict:
    score: str
    confidence: float | None
    threshold: float

    @property
    def outcome(self) -> Outcome:
        if self.confidence is None:
            return "no_confidence"
        return "kept" if self.confidence >= self.threshold else "escalate"

    def reason(self) -> str:
        """The route reason's suffix for this verdict (escalation outcomes add to it)."""
        if self.confidence is None:
            return f"; no {self.score} confidence, kept"
        cmp = ">=" if self.confidence >= self.threshold else "<"
        return f"; {self.score}={self.confidence:.2f} {cmp} {self.threshold:g}"


def judge(
    plan: EscalationPlan, body: Mapping[str, Any], prompt: str, verifiers: Mapping[str, Verifier] | None
) -> Verdict:
    """The verdict on a first answer (an OpenAI chat or text completion body)."""
    return Verdict(plan.score, confidence(plan.score, body, prompt, verifiers), plan.threshold)


@dataclass(slots=True)
class StreamedAnswer:
    """The first choice of a streamed answer, as far as it has arrived: its text, its token
    log-probabilities (when the upstream sent them) and whether it has finished."""

    chat: bool = True
    text: list[str] = field(default_factory=list)
    chars: int = 0
    logprobs: list[Any] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        for c in chunk.get("choices") or ():
            if c.get("index", 0) != 0:
                continue
            if "delta" in c:
                piece = (c.get("delta") or {}).get("content")
            else:
                self.chat = False
                piece = c.get("text")
            if piece:
                self.text.append(piece)
                self.chars += len(piece)
            lp = c.get("logprobs") or {}
            if isinstance(lp.get("content"), list):
                self.logprobs.extend(lp["content"])
            elif isinstance(lp.get("token_logprobs"), list):
                self.token_logprobs.extend(lp["token_logprobs"])
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]

    def body(self) -> dict[str, Any]:
        """The answer so far as a completion body, the shape `router.escalation` reads."""
        text = "".join(self.text)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": self.logprobs} if self.logprobs else None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": {"token_logprobs": self.token_logprobs} if self.token_logprobs else None,
            }
        choice["finish_reason"] = self.finish_reason
        return {"choices": [choice]}


MakeCall = Callable[[bool, Mapping[str, Any] | None], CallFactory]  # (stream, extra body fields) -> calls


@dataclass(slots=True)
class Streamed:
    """What a streamed request sends: ``head`` (chunks already read), then ``rest`` as it arrives;
    ``source`` (an executor stream) is closed at the end whatever happens."""

    head: list[dict[str, Any]]
    rest: AsyncIterator[dict[str, Any]] | None
    source: AsyncGenerator[dict[str, Any], None]
    strip_logprobs: bool = False  # log-probabilities asked for the judgement, not by the client


async def _raising(err: BaseException) -> AsyncIterator[dict[str, Any]]:
    """A stream whose next item is ``err``: what is left of an answer that broke off."""
    raise err
    yield {}  # an async generator, never reached


class Cascades:
    """Runs a decision's escalation plan: the first answer, its verdict, the second when needed.
    Both attempts are logged (the executor's attempt rows); ``route.reason`` tells what happened."""

    def __init__(self, executor: Executor, catalog: Catalog, plugins: Plugins, metrics: Metrics) -> None:
        self._executor = executor
        self._catalog = catalog
        self._plugins = plugins
        self._metrics = metrics

    @staticmethod
    def logprobs_extra(plan: EscalationPlan, kind: str, asked: bool) -> dict[str, Any] | None:
        """Body fields that ask the first model for token log-probabilities when the score needs them."""
        if plan.score != "logprobs" or asked:
            return None
        return {"logprobs": True if kind == "chat" else 1}

    def _count(self, route: Route, score: str, outcome: str) -> None:
        self._metrics.escalations.labels(route.policy or "", score, outcome).inc()

    def _second_plan(self, route: Route, plan: EscalationPlan) -> Plan:
        return Plan(self._catalog.targets(plan.to), retry=route.plan.retry, triggers=route.plan.triggers)

    async def complete(
        self,
        ex: Execution,
        route: Route,
        plan: EscalationPlan,
        first: UpstreamResponse,
        make_call: MakeCall,
        prompt: str,
    ) -> UpstreamResponse:
        """The answer to return for a whole (non-streamed) request: ``first``, or the stronger
        model's when ``first`` is judged below the threshold. A failed escalation keeps ``first``."""
        if ex.served is None or ex.served.deployment.name != plan.first.name:
            return first  # a fallback answered: not judged
        verdict = judge(plan, first.body, prompt, self._plugins.verifiers)
        route.reason += verdict.reason()
        if verdict.outcome != "escalate":
            route.reason += ", kept" if verdict.outcome == "kept" else ""
            self._count(route, plan.score, verdict.outcome)
            return first
        served_first, usage_first = ex.served, ex.usage
        try:
            second = await self._executor.complete(ex, self._second_plan(route, plan), make_call(False, None))
        except UpstreamError:
            ex.served, ex.usage, ex.error = served_first, usage_first, None
            route.reason += ", escalation failed, kept first"
            self._count(route, plan.score, "failed")
            return first
        route.reason += f", escalated to {ex.served.deployment.model if ex.served else '?'}"
        self._count(route, plan.score, "escalated")
        return second

    async def stream(
        self,
        ex: Execution,
        route: Route,
        plan: EscalationPlan,
        make_call: MakeCall,
        prompt: str,
        kind: str,
        asked_logprobs: bool,
        started: float,
    ) -> Streamed:
        """What to stream for a streamed request: hold back the first answer up to
        ``plan.stream_buffer_chars``, judge what is held (the whole answer when it is shorter), then
        stream it on, or drop it and stream the stronger model's answer. Raises the upstream error
        when nothing answered at all. ``started`` (perf_counter at the request's start) dates the
        client's first token for the log row."""
        first = self._executor.stream(
            ex, route.plan, make_call(True, self.logprobs_extra(plan, kind, asked_logprobs))
        )
        held: list[dict[str, Any]] = []
        answer = StreamedAnswer(chat=kind == "chat")
        whole = False
        cut: UpstreamError | None = None
        try:
            async for chunk in first:
                held.append(chunk)
                answer.add(chunk)
                if answer.chars >= plan.stream_buffer_chars:
                    break
            else:
                whole = True
        except UpstreamError as err:
            if not held:
                await first.aclose()
                raise  # nothing answered: a plain error, as for any request
            cut = err  # the first answer broke off after it began; nobody has seen it
        except BaseException:  # the client left, or the server is stopping: end the attempt now
            await first.aclose()
            raise
        strip = not asked_logprobs
        rest_of_first = None if whole else first
        if (
            ex.served is None or ex.served.deployment.name != plan.first.name
        ):  # a fallback answered: not judged
            ex.ttft_s = time.perf_counter() - started
            return Streamed(held, _raising(cut) if cut is not None else rest_of_first, first, strip)
        if cut is not None:
            route.reason += f"; first answer cut after {answer.chars} chars"
            outcome: Outcome = "escalate"
        else:
            verdict = judge(plan, answer.body(), prompt, self._plugins.verifiers)
            route.reason += verdict.reason() + ("" if whole else f" (first {answer.chars} chars)")
            outcome = verdict.outcome
        if outcome != "escalate":
            ex.ttft_s = time.perf_counter() - started
            route.reason += ", kept" if outcome == "kept" else ""
            self._count(route, plan.score, outcome)
            return Streamed(held, rest_of_first, first, strip)
        served_first, usage_first = ex.served, ex.usage
        second = self._executor.stream(ex, self._second_plan(route, plan), make_call(True, None))
        try:
            head = await second.__anext__()
        except (UpstreamError, StopAsyncIteration):
            await second.aclose()
            ex.served, ex.usage, ex.error = served_first, usage_first, None
            if cut is not None:
                await first.aclose()
                raise cut from None
            ex.ttft_s = time.perf_counter() - started
            route.reason += ", escalation failed, kept first"
            self._count(route, plan.score, "failed")
            return Streamed(held, rest_of_first, first, strip)
        except BaseException:
            await second.aclose()
            await first.aclose()
            raise
        await (
            first.aclose()
        )  # the held-back answer is dropped; its attempt is logged as cancelled if unfinished
        ex.ttft_s = time.perf_counter() - started
        route.reason += f", escalated to {ex.served.deployment.model if ex.served else '?'}"
        self._count(route, plan.score, "escalated")
        return Streamed([head], second, second)
