"""Cascades: judge the first (cheap) answer, then keep it or ask the stronger model.

The router decides who answers first, who next, the score and the threshold (`EscalationPlan`); the
score itself is `router.escalation.confidence` (mean token log-probability, or a trained answer
verifier). Here the two meet: a `Verdict` per first answer, and `Cascades` runs the attempts, for
whole answers (`complete`) and for streamed ones (`stream`: the first answer is held back up to the
policy's ``stream_buffer_chars`` and judged before anything reaches the client). For streamed requests,
`router.escalation.StreamedAnswer` collects the first answer's chunks into the body the score reads. What is judged is what the model
generated: a legacy completion's echoed prompt is left out (`router.escalation.without_echo`), and a
request that generates nothing (``max_tokens: 0`` with ``echo``, scoring the prompt) is not judged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from backends.base import UpstreamError, UpstreamResponse
from router.decision import EscalationPlan
from router.escalation import Echo, StreamedAnswer, confidence, first_prompt, without_echo
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


@dataclass(slots=True, frozen=True)
class Asked:
    """What the client's request asks that judging its first answer depends on."""

    prompt: str  # the text a verifier reads as the question
    kind: str = "chat"  # the upstream call: "chat" or "completion" (legacy)
    logprobs: bool = False  # the client asked for log-probabilities (else those the cascade asks for are dropped)
    echo: Echo | None = None  # a legacy completion with echo: the prompt its text starts with
    generates: bool = True  # False for max_tokens 0 (with echo: the prompt is scored): nothing to judge

    @classmethod
    def completion(
        cls, prompt: str, prompt_field: Any, logprobs: int | None, echo: bool | None, max_tokens: int | None
    ) -> Asked:
        """A legacy text completion's (``prompt_field``: the request's ``prompt``, text or token ids, one or
        several; the first choice answers the first, and is judged against it, not against ``prompt``, every
        prompt's text). ``logprobs: 0`` asks for them too."""
        first = first_prompt(prompt_field)
        question = first if isinstance(first, str) else prompt
        return cls(question, "completion", logprobs is not None, Echo.of(prompt_field) if echo else None, max_tokens != 0)


def judge(
    plan: EscalationPlan, body: Mapping[str, Any], asked: Asked, verifiers: Mapping[str, Verifier] | None
) -> Verdict:
    """The verdict on a first answer (an OpenAI chat or text completion body), on what the model generated."""
    body = without_echo(body, asked.echo)
    return Verdict(plan.score, confidence(plan.score, body, asked.prompt, verifiers), plan.threshold)


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
    def logprobs_extra(plan: EscalationPlan, asked: Asked) -> dict[str, Any] | None:
        """Body fields that ask the first model for token log-probabilities when the score needs them."""
        if plan.score != "logprobs" or asked.logprobs or not asked.generates:
            return None
        return {"logprobs": True if asked.kind == "chat" else 1}

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
        asked: Asked,
    ) -> UpstreamResponse:
        """The answer to return for a whole (non-streamed) request: ``first``, or the stronger
        model's when ``first`` is judged below the threshold. A failed escalation keeps ``first``."""
        if ex.served is None or ex.served.deployment.name != plan.first.name:
            return first  # a fallback answered: not judged
        if not asked.generates:
            route.reason += "; nothing generated, not judged"
            return first
        verdict = judge(plan, first.body, asked, self._plugins.verifiers)
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
        asked: Asked,
        started: float,
    ) -> Streamed:
        """What to stream for a streamed request: hold back the first answer up to
        ``plan.stream_buffer_chars`` of generated text (an echoed prompt not counted), judge what is
        held (the whole answer when it is shorter), then stream it on, or drop it and stream the
        stronger model's answer. A request that generates nothing is streamed on unjudged. Raises the
        upstream error when nothing answered at all. ``started`` (perf_counter at the request's start)
        dates the client's first token for the log row."""
        first = self._executor.stream(ex, route.plan, make_call(True, self.logprobs_extra(plan, asked)))
        held: list[dict[str, Any]] = []
        answer = StreamedAnswer(chat=asked.kind == "chat", echo=asked.echo)
        hold = plan.stream_buffer_chars if asked.generates else 0  # nothing to judge: the first chunk suffices
        whole = False
        cut: UpstreamError | None = None
        try:
            async for chunk in first:
                held.append(chunk)
                answer.add(chunk)
                if answer.generated_chars() >= hold:
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
        strip = not asked.logprobs
        rest_of_first = None if whole else first
        if (
            ex.served is None or ex.served.deployment.name != plan.first.name
        ):  # a fallback answered: not judged
            ex.ttft_s = time.perf_counter() - started
            return Streamed(held, _raising(cut) if cut is not None else rest_of_first, first, strip)
        if not asked.generates:
            ex.ttft_s = time.perf_counter() - started
            route.reason += "; nothing generated, not judged"
            return Streamed(held, rest_of_first, first, strip)
        if cut is not None:
            route.reason += f"; first answer cut after {answer.generated_chars()} chars"
            outcome: Outcome = "escalate"
        else:
            verdict = judge(plan, answer.body(), asked, self._plugins.verifiers)
            route.reason += verdict.reason() + ("" if whole else f" (first {answer.generated_chars()} chars)")
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
