"""Sampling parameters and the batched sampler.

All rows of a step are sampled in one call: temperature, top-k and top-p are applied as per-row tensors,
so one request's settings never affect another's. Randomness is per *sequence*: every sequence owns a
`torch.Generator` (seeded from the request's ``seed``, or randomly) and a token is drawn by inverting the
row's CDF at one uniform from that generator. That is an exact sample, costs one random number per
token, and makes a seeded request reproducible whatever else is in the batch, and across preemption (a
recomputed sequence keeps its generator).

Top-k / top-p look only at the top 256 candidates (a ``topk``, not a full-vocabulary sort); a top-p
nucleus that does not close within them (a very flat distribution) is sampled by rejection instead of
a sort (`_nucleus_by_rejection`). Semantics as vLLM: top-k first, then top-p on the renormalised top-k
distribution.

Presence/frequency penalties and ``logit_bias`` (OpenAI's definitions, vLLM's implementation) change the
logits of the rows that ask for them before greedy or random picking (`adjust_logits`); a step whose rows
ask for none skips that work entirely.

Logprobs are those of the model's raw distribution (``log_softmax`` of the logits, before penalties,
logit_bias, temperature and truncation), as vLLM reports by default. Prompt logprobs (`position_logprobs`)
are read the same way from a prefill's logits at every position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .errors import InvalidRequest

# Temperatures below this sample greedily: dividing logits by a few 1e-38 overflows the softmax to NaN (and
# the sample to an arbitrary token), and any temperature this small already puts all mass on the argmax.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(slots=True)
class SamplingParams:
    """What to generate for one request (OpenAI names; ``temperature`` below GREEDY_BELOW_TEMPERATURE, 0
    included, means greedy).

    ``max_tokens`` 0 generates nothing: the prompt is prefilled (and scored, with ``prompt_logprobs``) and
    every choice finishes with "length". ``prompt_logprobs`` (vLLM's name) asks for the logprob of every
    prompt token after the first, given the tokens before it, with that many top alternatives."""

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
    presence_penalty: float = 0.0  # subtracted once from each token this choice has generated
    frequency_penalty: float = 0.0  # subtracted per time this choice has generated the token
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    prompt_logprobs: int | None = None  # None: none; N: each prompt token's logprob and its top N

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise `InvalidRequest` naming the field at fault; ``vocab_size`` bounds logit_bias's token ids."""
        if self.max_tokens < 0:
            raise InvalidRequest("max_tokens must be >= 0", "max_tokens")
        if self.temperature < 0.0:
            raise InvalidRequest("temperature must be >= 0", "temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest("top_p must be in (0, 1]", "top_p")
        if self.top_k < 0:
            raise InvalidRequest("top_k must be >= 0", "top_k")
        if self.n < 1:
            raise InvalidRequest("n must be >= 1", "n")
        if not 0 <= self.top_logprobs <= 20:
            raise InvalidRequest("top_logprobs must be in [0, 20]", "top_logprobs")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= 20:
            raise InvalidRequest("prompt_logprobs must be in [0, 20]", "prompt_logprobs")
        if any(not s for s in self.stop):
            raise InvalidRequest("stop strings must not be empty", "stop")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:  # NaN fails too
                raise InvalidRequest(f"{name} must be in [-2, 2], got {getattr(self, name)}", name)
        for token, bias in self.logit_bias.items():
            if not -100.0 <= bias <= 100.0:
                raise InvalidRequest(f"logit_bias values must be in [-100, 100], got {bias} for token {token}",
                                     "logit_bias")
            if vocab_size is not None and not 0 <= token < vocab_size:
                raise InvalidRequest(f"logit_bias token id {token} is outside the vocabulary [0, {vocab_size})",
                                     "logit_bias")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    @property
    def adjusts_logits(self) -> bool:
        """Whether sampling must change the logits first (penalties or logit_bias)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


class TokenLogprob(NamedTuple):
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token_id, logprob), best first


@dataclass(slots=True)
class SampleRow:
    """One row to sample: its params, its sequence's generator, and the tokens its sequence has generated so
    far (read only when ``params.adjusts_logits``; the engine leaves it empty otherwise)."""

    params: SamplingParams
    generator: torch.Generator | None
    output_ids: Sequence[int] = ()


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return g


def choice_seed(seed: int, index: int) -> int:
    """The generator seed of choice ``index`` of a request seeded with ``seed``.

    Choice 0 draws from the seed itself, so a seeded single-choice request is what it always was. Choice
    i > 0 draws from a 64-bit hash of (seed, i): ``seed + i`` would make choice i of seed s replay the
    single choice of seed s + i (a client stepping its seed would get earlier answers again), while the
    hash keeps the n choices reproducible for one seed and unrelated to every other seed's choices."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8, person=b"choice-seed").digest()
    return int.from_bytes(digest, "little")


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> tuple[list[int], list[TokenLogprob | None]]:
    """Pick one token per row of ``logits [B, V]``; logprobs (of the raw logits) for rows that asked."""
    logits = logits.float()
    batch, vocab = logits.shape
    scores = adjust_logits(logits, rows) if any(r.params.adjusts_logits for r in rows) else logits
    random_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
    tokens = scores.argmax(-1)
    if random_rows:
        tokens[random_rows] = _sample_random(scores[random_rows], [rows[i] for i in random_rows])
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


# Positions whose log_softmax is taken at once by `position_logprobs`: bounds its float32 working memory to
# this many rows of the vocabulary, whatever the prefill chunk's length.
LOGPROB_SLAB_POSITIONS = 64


def position_logprobs(logits: torch.Tensor, targets: list[int], top: int) -> list[TokenLogprob]:
    """Logprob of ``targets[t]`` under ``logits[t]`` (``[T, V]``, T >= len(targets)) and the ``top`` best
    tokens there, for t < len(targets): the raw distribution, as `sample` reports it. ``log_softmax`` runs
    over slabs of `LOGPROB_SLAB_POSITIONS` positions, so only (token logprob, top-N) per position is
    kept, never a float32 copy of the whole ``[T, V]``; one host transfer at the end."""
    n = len(targets)
    ids = torch.tensor(targets, dtype=torch.long, device=logits.device)
    chosen, top_v, top_i = [], [], []
    for s in range(0, n, LOGPROB_SLAB_POSITIONS):
        e = min(n, s + LOGPROB_SLAB_POSITIONS)
        lp = torch.log_softmax(logits[s:e].float(), dim=-1)
        chosen.append(lp.gather(1, ids[s:e, None])[:, 0])
        if top:
            v, i = lp.topk(top, dim=-1)
            top_v.append(v)
            top_i.append(i)
    values = torch.cat(chosen).tolist() if chosen else []
    tv = torch.cat(top_v).tolist() if top_v else [[] for _ in range(n)]
    ti = torch.cat(top_i).tolist() if top_i else [[] for _ in range(n)]
    return [
        TokenLogprob(tok, lp, list(zip(ti[t], tv[t], strict=True)))
        for t, (tok, lp) in enumerate(zip(targets, values, strict=True))
    ]


def adjust_logits(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    """``logits [B, V]`` with each row's penalties and logit_bias applied, as a new tensor (the raw logits
    stay as they are: logprobs are read from them).

    As OpenAI defines them and vLLM applies them, the penalties count the tokens this choice has generated,
    never the prompt: ``logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)``;
    ``logit_bias`` adds its value to its token's logit. The counts come from one ``scatter_add`` over the
    penalised rows' generated tokens (padded with an id past the vocabulary, whose column is dropped) and
    the biases from one ``index_put``, so the work is per generated token and per bias entry, never per
    vocabulary entry in Python."""
    out = logits.clone()
    dev = logits.device
    vocab = logits.shape[1]
    penalised = [
        i for i, r in enumerate(rows) if r.output_ids and (r.params.presence_penalty or r.params.frequency_penalty)
    ]
    if penalised:
        width = max(len(rows[i].output_ids) for i in penalised)
        padded = [[*rows[i].output_ids, *[vocab] * (width - len(rows[i].output_ids))] for i in penalised]
        ids = torch.tensor(padded, dtype=torch.long, device=dev)
        counts = torch.zeros(len(penalised), vocab + 1, device=dev)
        counts.scatter_add_(1, ids, torch.ones(ids.shape, device=dev))
        counts = counts[:, :vocab]
        frequency = torch.tensor([rows[i].params.frequency_penalty for i in penalised], device=dev)[:, None]
        presence = torch.tensor([rows[i].params.presence_penalty for i in penalised], device=dev)[:, None]
        penalty = frequency * counts + presence * (counts > 0)
        out.index_add_(0, torch.tensor(penalised, device=dev), -penalty)
    biased = [i for i, r in enumerate(rows) if r.params.logit_bias]
    if biased:
        row_ids = [i for i in biased for _ in rows[i].params.logit_bias]
        token_ids = [t for i in biased for t in rows[i].params.logit_bias]
        values = [b for i in biased for b in rows[i].params.logit_bias.values()]
        index = (torch.tensor(row_ids, device=dev), torch.tensor(token_ids, device=dev))
        out.index_put_(index, torch.tensor(values, device=dev), accumulate=True)
    return out


# Candidates kept for top-k / top-p: a nucleus that needs more (a flat distribution) falls back to a sort.
_CANDIDATES = 256


def _sample_random(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
    dev = logits.device
    temps = torch.tensor([r.params.temperature for r in rows], device=dev)[:, None]
    probs = torch.softmax(logits / temps, dim=-1)
    batch, vocab = probs.shape
    u = torch.stack([torch.rand((), generator=r.generator, device=dev) for r in rows])
    ks = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows]
    ps = [r.params.top_p for r in rows]
    out = torch.empty(batch, dtype=torch.long, device=dev)
    plain = [i for i in range(batch) if ks[i] == vocab and ps[i] >= 1.0]
    if plain:
        out[plain] = _inverse_cdf(probs[plain], u[plain], torch.full((len(plain),), vocab, device=dev))
    trunc = [i for i in range(batch) if ks[i] < vocab or ps[i] < 1.0]
    if trunc:
        # Top candidates only (>= every finite top_k), unless a top-p nucleus does not close within them.
        c = min(vocab, max([_CANDIDATES] + [ks[i] for i in trunc if ks[i] < vocab]))
        vals, idx = probs[trunc].topk(c, dim=-1)
        mass = vals.sum(-1).tolist()
        wide = [j for j, i in enumerate(trunc) if ks[i] == vocab and mass[j] < ps[i]]
        narrow = [j for j in range(len(trunc)) if j not in set(wide)]
        if narrow:
            rows_n = [trunc[j] for j in narrow]
            out[rows_n] = _truncated_pick(vals[narrow], idx[narrow], [ks[i] for i in rows_n],
                                          [ps[i] for i in rows_n], u[rows_n], vocab)
        if wide:
            rows_w = [trunc[j] for j in wide]
            out[rows_w] = _nucleus_by_rejection(probs[rows_w], [ps[i] for i in rows_w], u[rows_w],
                                                [rows[i].generator for i in rows_w])
    return out


def _truncated_pick(vals: torch.Tensor, idx: torch.Tensor, ks: list[int], ps: list[float], u: torch.Tensor,
                    vocab: int) -> torch.Tensor:
    """Sample from the top-k, then top-p (on the top-k-renormalised distribution), of sorted candidates.

    vals/idx: ``[n, c]`` probabilities in descending order and their token ids. The kept tokens always
    form a prefix (the top token is always kept)."""
    dev = vals.device
    c = vals.shape[-1]
    k = torch.tensor(ks, device=dev)[:, None]
    w = vals * (torch.arange(c, device=dev)[None, :] < k)
    # Renormalise over the top-k when k truncates; a row without top-k is already a full distribution.
    total = torch.where(k < vocab, w.sum(-1, keepdim=True), torch.ones_like(w[:, :1]))
    w = w / total
    p = torch.tensor([q if q < 1.0 else float("inf") for q in ps], device=dev)[:, None]
    keep = (w.cumsum(-1) - w) < p  # mass of strictly better tokens below p
    keep &= torch.arange(c, device=dev)[None, :] < k
    keep[:, 0] = True
    w = w * keep
    pick = _inverse_cdf(w, u, keep.sum(-1))
    return idx.gather(1, pick[:, None])[:, 0]


def _nucleus_by_rejection(probs: torch.Tensor, ps: list[float], u: torch.Tensor,
                          generators: list[torch.Generator | None], max_tries: int = 32) -> torch.Tensor:
    """Top-p for a flat distribution without sorting the vocabulary.

    Draw from the full distribution and accept the token iff the mass of strictly more likely tokens is
    below p (i.e. it is in the nucleus); otherwise draw again from the same generator. Conditioning on
    acceptance gives exactly the renormalised nucleus, and since the nucleus holds >= p of the mass the
    expected number of draws is <= 1/p. Rows still unlucky after ``max_tries`` are sorted.
    """
    dev = probs.device
    n, vocab = probs.shape
    out = torch.empty(n, dtype=torch.long, device=dev)
    p = torch.tensor(ps, device=dev)
    full = torch.full((n,), vocab, device=dev)
    todo = list(range(n))
    for _ in range(max_tries):
        tok = _inverse_cdf(probs[todo], u[todo], full[todo])
        pt = probs[todo].gather(1, tok[:, None])
        better = (probs[todo] * (probs[todo] > pt)).sum(-1)
        ok = (better < p[todo]).tolist()
        for j, i in enumerate(todo):
            if ok[j]:
                out[i] = tok[j]
        todo = [i for j, i in enumerate(todo) if not ok[j]]
        if not todo:
            return out
        u = u.clone()
        for i in todo:
            u[i] = torch.rand((), generator=generators[i], device=dev)
    vals, idx = probs[todo].sort(dim=-1, descending=True)
    out[todo] = _truncated_pick(vals, idx, [vocab] * len(todo), [ps[i] for i in todo], u[todo], vocab)
    return out


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
    """Index j of each row with cdf[j-1] <= u * total < cdf[j] (an exact draw from the weights ``w``)."""
    cdf = w.cumsum(-1)
    x = u * cdf[:, -1]
    j = torch.searchsorted(cdf, x[:, None], right=True)[:, 0]
    return torch.minimum(j, n_valid - 1)
