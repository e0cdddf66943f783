"""Sampling parameters and the batched sampler.

All rows of a step are sampled in one call: temperature, top-k and top-p are applied as per-row tensors,
so one request's settings never affect another's. Randomness is per *sequence*: every sequence owns a
`torch.Generator` (seeded from the request's ``seed``, or randomly), and a token is drawn by the
exponential-race trick ``argmax(p / E)`` with ``E ~ Exp(1)`` drawn from that generator. That is an exact
sample from ``p``, and it makes a seeded request reproducible whatever else is in the batch, and across
preemption (a recomputed sequence keeps its generator).

Logprobs are those of the model's raw distribution (``log_softmax`` of the logits, before temperature
and truncation), as vLLM reports by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


@dataclass(slots=True)
class SamplingParams:
    """What to generate for one request (OpenAI names; ``temperature == 0`` means greedy)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: bool = False
    top_logprobs: int = 0

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0.0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError("top_logprobs must be in [0, 20]")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class TokenLogprob(NamedTuple):
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token_id, logprob), best first


@dataclass(slots=True)
class SampleRow:
    """One row to sample: its params and its sequence's generator."""

    params: SamplingParams
    generator: torch.Generator | None


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return g


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> tuple[list[int], list[TokenLogprob | None]]:
    """Pick one token per row of ``logits [B, V]``; logprobs for rows that asked for them."""
    logits = logits.float()
    batch, vocab = logits.shape
    random_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
    tokens = logits.argmax(-1)
    if random_rows:
        tokens[random_rows] = _sample_random(logits[random_rows], [rows[i] for i in random_rows])
    out = tokens.tolist()
    logprobs: list[TokenLogprob | None] = [None] * batch
    want = [i for i, r in enumerate(rows) if r.params.logprobs]
    if want:
        lp = torch.log_softmax(logits[want], dim=-1)
        k = max(rows[i].params.top_logprobs for i in want)
        top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
        chosen = lp.gather(1, tokens[want][:, None])[:, 0].tolist()
        top_v, top_i = top_v.tolist(), top_i.tolist()
        for j, i in enumerate(want):
            n = rows[i].params.top_logprobs
            logprobs[i] = TokenLogprob(out[i], chosen[j], list(zip(top_i[j][:n], top_v[j][:n], strict=True)))
    return out, logprobs


def _sample_random(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    temps = torch.tensor([r.params.temperature for r in rows], device=logits.device)[:, None]
    logits = logits / temps
    top_k = [r.params.top_k for r in rows]
    top_p = [r.params.top_p for r in rows]
    if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
        logits = _truncate(logits, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    noise = torch.empty_like(probs)
    for i, r in enumerate(rows):
        noise[i].exponential_(generator=r.generator)
    return (probs / noise.clamp_min_(1e-20)).argmax(-1)


def _truncate(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask everything outside each row's top-k and top-p nucleus (the top token always survives)."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    dev = logits.device
    k = torch.tensor([k if k > 0 else vocab for k in top_k], device=dev)[:, None]
    ranks = torch.arange(vocab, device=dev)[None, :]
    drop = ranks >= k
    p = torch.tensor(top_p, device=dev)[:, None]
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    before = probs.cumsum(-1) - probs  # mass of strictly better tokens
    drop |= before >= p
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)
