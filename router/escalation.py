"""Confidence of an answer, for cascades: serve from a cheap model, escalate when it is unsure.

Pure functions over the OpenAI-shaped response body (and, for a trained verifier, the prompt); the
gateway decides when to call them and what to do with the number (`policies.schema.Escalation`:
threshold, score). A legacy completion with ``echo`` repeats its prompt before the answer (and, with
``logprobs``, the prompt tokens' log-probabilities before the answer's): `without_echo` keeps what the
model generated, the only part a score judges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.protocols import Verifier


def _mean_logprob(values: Sequence[float]) -> float | None:
    vals = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def logprob_confidence(body: Mapping[str, Any]) -> float | None:
    """exp(mean token log-probability) of the first choice: the geometric-mean probability the
    model gave its own tokens. None when the answer carries no logprobs (then nobody escalates
    on a guess)."""
    choices = body.get("choices") or []
    if not choices:
        return None
    lp = choices[0].get("logprobs") or {}
    if isinstance(lp.get("content"), list):  # chat
        mean = _mean_logprob([t.get("logprob") for t in lp["content"] if isinstance(t, Mapping)])
    elif isinstance(lp.get("token_logprobs"), list):  # completions
        mean = _mean_logprob(lp["token_logprobs"])
    else:
        return None
    return math.exp(mean) if mean is not None else None


def answer_text(body: Mapping[str, Any]) -> str | None:
    """The first choice's text (chat message content or completion text), None when there is none."""
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return None
    c = choices[0]
    msg = c.get("message")
    text = msg.get("content") if isinstance(msg, Mapping) else c.get("text")
    return text if isinstance(text, str) else None


@dataclass(frozen=True, slots=True)
class Echo:
    """The prompt a legacy completion with ``echo: true`` repeats before its first choice's completion: its
    text, or, for a prompt of token ids (whose text only the upstream's tokenizer knows), its token count."""

    text: str | None = None
    tokens: int | None = None

    @classmethod
    def of(cls, prompt: Any) -> Echo:
        """What a legacy completion with ``echo`` repeats before its first choice, for the request's ``prompt``."""
        first = first_prompt(prompt)
        return cls(text=first) if isinstance(first, str) else cls(tokens=len(first) if isinstance(first, list) else 0)


def first_prompt(prompt: Any) -> Any:
    """The prompt a legacy completion's first choice answers: the request's ``prompt`` when it is one (text or
    token ids), else the first of several (choice ``i * n + j`` answers prompt ``i``)."""
    several = isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)
    return prompt[0] if several else prompt


def token_offsets(lp: Mapping[str, Any], start: int, chars: int) -> list[int] | None:
    """Where each token of a legacy ``logprobs`` object starts in the choice's text, for an object that
    describes the ``chars`` characters from ``start`` (the whole text, or one streamed chunk): its
    ``text_offset`` when every value lies there (absolute offsets, as OpenAI, vLLM and the local engine
    send them), else counted from ``start`` over its ``tokens``; None when neither is usable."""
    values = lp.get("token_logprobs")
    n = len(values) if isinstance(values, list) else 0
    offsets = lp.get("text_offset")
    if (
        isinstance(offsets, list)
        and len(offsets) == n
        and all(isinstance(o, int) and start <= o <= start + chars for o in offsets)
    ):
        return list(offsets)
    tokens = lp.get("tokens")
    if not isinstance(tokens, list) or len(tokens) != n or not all(isinstance(t, str) for t in tokens):
        return None
    out = []
    for t in tokens:
        out.append(start)
        start += len(t)
    return out


def echo_split(
    text: str, values: Sequence[Any] | None, offsets: Sequence[int] | None, echo: Echo
) -> tuple[int | None, int | None]:
    """(where the completion starts in ``text``, where its entries start in ``values``, the choice's
    token_logprobs), each None when it cannot be known.

    A text prompt is echoed as itself (an upstream that did not echo it leaves the text without it): its
    length places the completion, and the token offsets place its entries. A token-id prompt's text is the
    upstream's: when its tokens' logprobs came back (the first is null, nothing precedes it) the completion
    is what follows its ``tokens`` entries, else every entry is the completion's; the offset of the
    completion's first entry places its text."""
    if echo.text is not None:
        cut = len(echo.text) if text.startswith(echo.text) else 0
        if values is None:
            return cut, None
        if offsets is None:
            return cut, 0 if cut == 0 else None
        return cut, next((i for i, o in enumerate(offsets) if o >= cut), len(values))
    if values is None or echo.tokens is None:
        return None, None
    skip = echo.tokens if 0 < echo.tokens <= len(values) and values[0] is None else 0
    if offsets is None:
        return None, skip
    return (offsets[skip] if skip < len(values) else len(text)), skip


def without_echo(body: Mapping[str, Any], echo: Echo | None) -> Mapping[str, Any]:
    """``body`` with its first choice reduced to what the model generated, for a legacy completion that
    echoes ``echo``: the text after the prompt, the log-probabilities of those tokens only. What cannot be
    placed (a token-id prompt echoed without logprobs) is left out: no text, no logprobs, no confidence."""
    if echo is None:
        return body
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return body
    c = choices[0]
    text = c["text"] if isinstance(c.get("text"), str) else ""
    lp = c.get("logprobs")
    values = lp.get("token_logprobs") if isinstance(lp, Mapping) else None
    values = values if isinstance(values, list) else None
    offsets = token_offsets(lp, 0, len(text)) if values is not None and isinstance(lp, Mapping) else None
    cut, first = echo_split(text, values, offsets, echo)
    choice = {
        **c,
        "text": text[cut:] if cut is not None else None,
        "logprobs": {"token_logprobs": values[first:]} if values is not None and first is not None else None,
    }
    return {**body, "choices": [choice, *choices[1:]]}


@dataclass(slots=True)
class StreamedAnswer:
    """The first choice of a streamed answer, as far as it has arrived: its text, its token
    log-probabilities (when the upstream sent them; legacy ones with where each token starts in the text)
    and whether it has finished. ``echo``: the prompt a legacy completion repeats first."""

    chat: bool = True
    echo: Echo | None = None
    text: list[str] = field(default_factory=list)
    chars: int = 0
    logprobs: list[Any] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    echo_chars: int | None = None  # the echoed prompt's length, once known

    def add(self, chunk: Mapping[str, Any]) -> None:
        """Take in one chunk (an OpenAI chat or legacy completion chunk; anything else in it is skipped)."""
        choices = chunk.get("choices")
        for c in choices if isinstance(choices, list) else ():
            if not isinstance(c, Mapping) or c.get("index", 0) != 0:
                continue
            if "delta" in c:
                delta = c.get("delta")
                piece = delta.get("content") if isinstance(delta, Mapping) else None
            else:
                self.chat = False
                piece = c.get("text")
            start = self.chars
            if isinstance(piece, str) and piece:
                self.text.append(piece)
                self.chars += len(piece)
            lp = c.get("logprobs")
            lp = lp if isinstance(lp, Mapping) else {}
            if isinstance(lp.get("content"), list):
                self.logprobs.extend(lp["content"])
            elif isinstance(lp.get("token_logprobs"), list):
                values = lp["token_logprobs"]
                self.token_logprobs.extend(values)
                # a chunk without usable offsets: its tokens are placed where its text starts
                offsets = token_offsets(lp, start, len(piece) if isinstance(piece, str) else 0)
                self.text_offset.extend(offsets if offsets is not None else [start] * len(values))
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]

    def generated_chars(self) -> int:
        """How much of the text held so far the model generated: an echoed prompt does not count (a
        token-id prompt's echo, whose length only the upstream knows, counts until its logprobs place it)."""
        if self.echo is None:
            return self.chars
        if self.echo.text is not None:
            return max(0, self.chars - len(self.echo.text))
        if self.echo_chars is None and self.token_logprobs:
            cut, first = echo_split("".join(self.text), self.token_logprobs, self.text_offset, self.echo)
            if first is not None and first < len(self.token_logprobs):  # the completion's first token is here
                self.echo_chars = cut
        return self.chars - self.echo_chars if self.echo_chars is not None else self.chars

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
                "logprobs": {"token_logprobs": self.token_logprobs, "text_offset": self.text_offset}
                if self.token_logprobs
                else None,
            }
        choice["finish_reason"] = self.finish_reason
        return {"choices": [choice]}



def verifier_name(score: str) -> str | None:
    """``verifier`` → "default", ``verifier:<name>`` → name; None for other scores."""
    if score == "verifier":
        return "default"
    if score.startswith("verifier:") and len(score) > len("verifier:"):
        return score[len("verifier:") :]
    return None


def confidence(
    score: str, body: Mapping[str, Any], prompt: str = "", verifiers: Mapping[str, Verifier] | None = None
) -> float | None:
    """The named confidence score of an answer; None for an unknown score or missing data.

    ``logprobs``: the answer's own token probabilities. ``verifier[:name]``: a trained verifier's
    p(acceptable | prompt, answer), for providers that return no log-probabilities.
    """
    if score == "logprobs":
        return logprob_confidence(body)
    name = verifier_name(score)
    if name is None or not verifiers or name not in verifiers:
        return None
    text = answer_text(body)
    return None if text is None else float(verifiers[name].p_ok(prompt, text))
