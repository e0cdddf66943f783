"""Requests, their sequences, incremental detokenization with stop strings, and the events consumers see.

A `Request` is what a client asked for (one prompt, ``n`` choices); each choice is a `Sequence` with its
own tokens, generator, SSM slot and KV block table. Consumers receive, per step, `Delta` events (new
tokens / text / logprobs of one choice, possibly with its ``finish_reason``), then one `Finished` with
the usage once every choice is done, or one `Failed`.

Text is produced incrementally and never retracted: a delta only contains text that can no longer become
part of a stop string, so a streamed answer equals the non-streamed one.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .kv_blocks import BlockTable
from .sampler import SamplingParams, TokenLogprob


class TokenizerLike(Protocol):
    eos_token_ids: list[int]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


# ============================================================================ events


@dataclass(slots=True)
class Delta:
    """New output of one choice since the previous event."""

    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | None
    # With finish_reason "stop": the stop string that matched, or the id of the stop_token_ids entry that
    # ended the choice; None when it stopped on EOS (vLLM's ``stop_reason``).
    stop_reason: str | int | None = None
    # On each choice's first delta, when the request asked for ``prompt_logprobs``: one entry per prompt
    # token, None for the first (nothing precedes it), shared by all choices of the request.
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Finished:
    usage: Usage


@dataclass(slots=True)
class Failed:
    error: BaseException


Event = Delta | Finished | Failed


# ============================================================================ detokenizer


class Detokenizer:
    """Turns a growing list of token ids into text, emitting only complete characters.

    Decodes a short window (``prefix_offset .. end``) and keeps what extends the previous window's text,
    the scheme vLLM and TGI use; a trailing U+FFFD means a multi-byte character is still incomplete.
    """

    __slots__ = ("tokenizer", "ids", "prefix_offset", "read_offset", "text")

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def add(self, token_id: int) -> str:
        """Append a token; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix) :]
            self.text += new
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new
        return ""

    def flush(self) -> str:
        """At the end of a sequence: emit whatever is pending, incomplete characters included (as U+FFFD)."""
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset :])
        new = full[len(prefix) :] if full.startswith(prefix) else ""
        self.text += new
        self.prefix_offset = self.read_offset = len(self.ids)
        return new


def _stop_holdback(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


# ============================================================================ request / sequence


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One choice of a request: its tokens and where its state lives.

    ``tokens`` = prompt + generated. ``num_computed`` tokens have been absorbed into the caches; the
    sequence is *prefilling* while more than one token is missing and *decoding* when exactly the last
    sampled token is. After preemption ``num_computed`` drops to 0 and the whole of ``tokens`` is
    recomputed (prompt and generated text alike) before sampling resumes.
    """

    __slots__ = (
        "seq_id",
        "request",
        "index",
        "tokens",
        "prompt_len",
        "num_computed",
        "status",
        "slot",
        "table",
        "generator",
        "detok",
        "sent_chars",
        "logprobs",
        "finish_reason",
        "stop_reason",
        "admit_order",
        "hashes",
        "num_registered",
        "prefill_target",
        "num_preemptions",
    )

    def __init__(
        self,
        seq_id: int,
        request: Request,
        index: int,
        generator: torch.Generator | None,
        tokenizer: TokenizerLike | None,
    ) -> None:
        self.seq_id = seq_id
        self.request = request
        self.index = index
        self.tokens: list[int] = list(request.prompt_ids)
        self.prompt_len = len(self.tokens)
        self.num_computed = 0
        self.status = Status.WAITING
        self.slot: int | None = None
        self.table = BlockTable()
        self.generator = generator
        self.detok = Detokenizer(tokenizer) if tokenizer is not None else None
        self.sent_chars = 0
        self.logprobs: list[TokenLogprob] | None = [] if request.params.logprobs else None
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.admit_order = -1
        self.hashes: list[int] = []  # chained block hashes of tokens[:prefill_target] (prefix cache)
        self.num_registered = 0  # leading blocks already published to the prefix cache
        self.prefill_target = 0  # len(tokens) when admitted: prefill up to here, then sample
        self.num_preemptions = 0

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def is_decoding(self) -> bool:
        return self.num_computed == len(self.tokens) - 1 and self.num_computed >= self.prefill_target

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def append(
        self, token_id: int, logprob: TokenLogprob | None, eos_ids: frozenset[int], max_model_len: int
    ) -> Delta:
        """Add a sampled token, apply the stop rules, and return what the consumer should receive.

        A stop token (EOS, or one of ``stop_token_ids``) ends the choice without showing: its text is not
        in the output, so its logprob is not either (OpenAI returns neither for the end-of-text token). It
        is still a generated token: ``token_ids`` and the usage count it, as vLLM does."""
        p = self.request.params
        is_eos = not p.ignore_eos and token_id in eos_ids
        is_stop_token = is_eos or token_id in p.stop_token_ids
        self.tokens.append(token_id)
        if is_stop_token:
            logprob = None
        if logprob is not None and self.logprobs is not None:
            self.logprobs.append(logprob)
        finish: str | None = None
        if is_stop_token:
            finish = "stop"
            self.stop_reason = None if is_eos else token_id
        elif self.detok is not None:
            self.detok.add(token_id)
            if p.stop and (matched := self._find_stop()) is not None:
                self.stop_reason = matched
                return self._finish("stop", token_id, logprob)
        if finish is None and (self.num_generated >= p.max_tokens or len(self.tokens) >= max_model_len):
            finish = "length"
        if finish is not None and self.detok is not None:
            self.detok.flush()  # incomplete trailing characters are emitted as U+FFFD, as decode() would
            if p.stop and (matched := self._find_stop()) is not None:
                finish = "stop"
                self.stop_reason = matched
        return self._finish(finish, token_id, logprob)

    def _finish(self, finish: str | None, token_id: int, logprob: TokenLogprob | None) -> Delta:
        self.finish_reason = finish
        return Delta(
            self.index,
            [token_id],
            self._take_text(finish is not None),
            [logprob] if logprob is not None else None,
            finish,
            self.stop_reason if finish is not None else None,
        )

    def _find_stop(self) -> str | None:
        """Cut the text at the first stop string (kept if include_stop_str_in_output); the string, if found."""
        assert self.detok is not None
        p = self.request.params
        text = self.detok.text
        longest = max(len(s) for s in p.stop)
        start = max(0, self.sent_chars - longest)
        hit: tuple[int, str] | None = None
        for s in p.stop:
            i = text.find(s, start)
            if i != -1 and (hit is None or i < hit[0]):
                hit = (i, s)
        if hit is None:
            return None
        i, s = hit
        self.detok.text = text[: i + (len(s) if p.include_stop_str_in_output else 0)]
        return s

    def _take_text(self, final: bool) -> str:
        if self.detok is None:
            return ""
        text = self.detok.text
        end = len(text)
        if not final and self.request.params.stop:
            end -= _stop_holdback(text, self.request.params.stop)
        end = max(end, self.sent_chars)
        out = text[self.sent_chars : end]
        self.sent_chars = end
        return out

    @property
    def text(self) -> str:
        return self.detok.text if self.detok is not None else ""


class Sink(Protocol):
    def put(self, event: Event) -> None: ...


@dataclass(eq=False)
class Request:
    """One submitted prompt and its ``params.n`` sequences."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: Any  # an engine sink (see engine.py): where events go
    arrival: float = field(default_factory=time.monotonic)
    seqs: list[Sequence] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (first admission of each choice)
    first_token_at: float | None = None
    spawned: bool = False  # choices 1..n-1 created (after choice 0's prefill)
    admitted: bool = False  # first scheduled (no longer counts against the queue bound)
    # With ``params.prompt_logprobs``: the prompt's logprobs, filled by choice 0's prefill chunks (entry 0
    # stays None); ``prompt_scored`` leading entries are final.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_scored: int = 1

    def __post_init__(self) -> None:
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None] * len(self.prompt_ids)

    @property
    def scores_prompt(self) -> bool:
        """Whether prompt logprobs are still to be computed (so choice 0 must prefill the whole prompt
        itself, not take it from the prefix cache)."""
        return self.prompt_logprobs is not None and self.prompt_scored < len(self.prompt_ids)

    def prompt_targets(self, start: int, end: int) -> list[int]:
        """The prompt tokens that a prefill chunk over positions [start, end) predicts (position p predicts
        token p + 1, for p + 1 < len(prompt)); none once the whole prompt is scored."""
        if not self.scores_prompt:
            return []
        return self.prompt_ids[start + 1 : min(end + 1, len(self.prompt_ids))]

    def record_prompt_logprobs(self, start: int, scored: list[TokenLogprob]) -> None:
        """Store what a chunk starting at ``start`` scored (`prompt_targets`' tokens, in order)."""
        assert self.prompt_logprobs is not None
        self.prompt_logprobs[start + 1 : start + 1 + len(scored)] = scored
        self.prompt_scored = max(self.prompt_scored, start + 1 + len(scored))

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=sum(s.num_generated for s in self.seqs),
            cached_tokens=self.cached_tokens,
        )
