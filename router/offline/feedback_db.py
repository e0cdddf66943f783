"""Read training rows from the gateway's feedback log (SQLAlchemy Core; file/network I/O lives here).

Shape: ``requests(id, prompt_text NULL, served_model, ...)`` and ``feedback(request_id, score, ...)`` with
``score`` in [0, 1]. One row per feedback record with a prompt; requests without prompt text (privacy
mode) are skipped since there is nothing to featurise.

The result is a :class:`LabeledDataset` whose label matrix is *partial*: each request only tells us about
the model that served it, every other model's label is NaN (unknown) — exactly how the trainer treats
RouterBench's missing labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from router.bandits import unit_reward
from router.escalation import Echo, StreamedAnswer, answer_text, first_prompt, without_echo
from router.offline.datasets import LabeledDataset

if TYPE_CHECKING:
    from router.offline.verifier_train import AnswerSet

__all__ = ["read_feedback", "read_logged_decisions", "read_answer_feedback", "logged_answer", "logged_answer_text"]


def _sync_url(url: str) -> str:
    # the gateway uses async drivers; offline training reads synchronously
    return (
        url.replace("+aiosqlite", "")
        .replace("+asyncpg", "+psycopg")
        .replace("postgresql://", "postgresql+psycopg://", 1)
        if url.startswith(("sqlite", "postgresql"))
        else url
    )


def _fetch(
    url: str, build: Callable[[sa.Table, sa.Table], sa.Select[Any]], limit: int | None
) -> Sequence[sa.Row[Any]]:
    """Reflect ``requests`` and ``feedback``, run the query ``build`` makes from them, return every row.

    Both readers differ only in their query; the engine's lifecycle lives here once. It is made per read
    and disposed before returning: these are one-shot offline reads, so no pooled connection should stay
    open on the gateway's database afterwards.
    """
    engine = sa.create_engine(_sync_url(url))
    try:
        md = sa.MetaData()
        req = sa.Table("requests", md, autoload_with=engine)
        fb = sa.Table("feedback", md, autoload_with=engine)
        q = build(req, fb)
        if limit:
            q = q.limit(limit)
        with engine.connect() as conn:
            return conn.execute(q).all()
    finally:
        engine.dispose()


def read_feedback(url: str, limit: int | None = None) -> LabeledDataset:
    """Join ``feedback`` to ``requests`` and build a dataset with one column per served model.

    Several feedback rows for the same request and model are averaged (score in [0, 1]).
    """

    def query(req: sa.Table, fb: sa.Table) -> sa.Select[Any]:
        return (
            sa.select(req.c.id, req.c.prompt_text, req.c.served_model, fb.c.score)
            .select_from(fb.join(req, fb.c.request_id == req.c.id))
            .where(req.c.prompt_text.is_not(None), fb.c.score.is_not(None), req.c.served_model.is_not(None))
            .order_by(req.c.id)
        )

    rows = _fetch(url, query, limit)
    models = sorted({str(r.served_model) for r in rows})
    col = {m: j for j, m in enumerate(models)}
    order: dict[str, int] = {}
    prompts: list[str] = []
    sums: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for r in rows:
        key = str(r.id)
        if key not in order:
            order[key] = len(prompts)
            prompts.append(str(r.prompt_text))
            sums.append(np.zeros(len(models)))
            counts.append(np.zeros(len(models)))
        i = order[key]
        s = unit_reward(r.score)
        sums[i][col[str(r.served_model)]] += s
        counts[i][col[str(r.served_model)]] += 1
    if prompts:
        s_arr, c_arr = np.vstack(sums), np.vstack(counts)
        labels = np.divide(s_arr, c_arr, out=np.full(s_arr.shape, np.nan), where=c_arr > 0)
    else:
        labels = np.zeros((0, len(models)))
    return LabeledDataset(
        name="feedback",
        prompts=prompts,
        models=models,
        labels=labels,
        ids=list(order),
        source_hashes={"db": f"{url.split('://')[0]}:{len(rows)} rows"},
    )


def read_logged_decisions(url: str, policy: str | None = None, limit: int | None = None) -> list[dict[str, object]]:
    """Logged routing decisions with their outcome, for off-policy evaluation.

    One row per request that has a prompt, a logged propensity and at least one feedback score:
    ``{"prompt", "action", "served", "propensity", "reward" (mean feedback score)}``. ``action`` is the
    model the logging policy chose (``chosen_model``), the one ``propensity`` is the probability of;
    ``served`` is the model that answered, which differs after a fallback. The reward is the request's,
    whoever answered. Rows logged before the chosen model was recorded (NULL, or a database not yet
    migrated) take the answering model as the action.
    ``policy`` keeps only the decisions one policy made (the logging policy being evaluated against).
    """

    def query(req: sa.Table, fb: sa.Table) -> sa.Select[Any]:
        chosen = req.c.chosen_model if "chosen_model" in req.c else sa.null()
        action = sa.func.coalesce(chosen, req.c.served_model)
        q = (
            sa.select(req.c.id, req.c.prompt_text, action.label("action"), req.c.served_model, req.c.propensity,
                      sa.func.avg(fb.c.score).label("reward"))
            .select_from(fb.join(req, fb.c.request_id == req.c.id))
            .where(req.c.prompt_text.is_not(None), req.c.propensity.is_not(None), action.is_not(None))
            .group_by(req.c.id, req.c.prompt_text, action, req.c.served_model, req.c.propensity)
            .order_by(req.c.id)
        )
        return q if policy is None else q.where(req.c.policy == policy)

    rows = _fetch(url, query, limit)
    return [{"prompt": r.prompt_text, "action": r.action, "served": r.served_model,
             "propensity": float(r.propensity), "reward": float(r.reward)} for r in rows]


def logged_answer(body: str) -> dict[str, Any] | None:
    """The first choice of a logged response body as a completion body (the shape `router.escalation` reads):
    a JSON completion (chat or text) as it is, a streamed one (``data: {...}`` lines) with its deltas joined and,
    for a legacy completion, its token log-probabilities placed in the joined text. None when unreadable."""
    body = body.strip()
    if not body.startswith("data:"):
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None
    from backends.sse import DONE, SSEDecoder

    decoder = SSEDecoder()
    answer = StreamedAnswer()  # what the cascade collects of a streamed first answer, the same way
    for _, data in decoder.feed(body.encode()) + decoder.flush():
        if data == DONE:
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if isinstance(chunk, dict):
            answer.add(chunk)
    doc = answer.body()
    if not answer.chars:  # nothing generated: no text to judge (tool calls), or no answer at all
        if not answer.chat:
            return None
        doc["choices"][0]["message"]["content"] = None
    return doc


def logged_answer_text(body: str, echo: Echo | None = None) -> str | None:
    """The answer text of a logged response body (see `logged_answer`): what the model generated, the text a
    cascade judges (a legacy completion's ``echo``, the prompt it repeats, cut off as the cascade cuts it). None
    when there is no text (tool calls, errors, an echoed token-id prompt that cannot be placed)."""
    doc = logged_answer(body)
    return None if doc is None else answer_text(without_echo(doc, echo))


def _judged(row: Any) -> tuple[str, Echo | None] | None:
    """The prompt text a cascade judges the row's answer against, and the prompt its answer echoes, read from
    the logged request body (a legacy completion's first choice answers its first prompt, after that prompt
    when ``echo``); the row's ``prompt_text`` and no echo for other endpoints. None for a legacy completion
    that generated nothing (``max_tokens: 0``), which a cascade does not judge."""
    request = None
    if row.endpoint == "completion" and row.request_body is not None:
        try:
            request = json.loads(str(row.request_body))
        except ValueError:
            request = None
    if not isinstance(request, dict) or "prompt" not in request:
        return str(row.prompt_text), None
    if request.get("max_tokens") == 0:
        return None
    first = first_prompt(request["prompt"])
    prompt = first if isinstance(first, str) else str(row.prompt_text)
    return prompt, Echo.of(request["prompt"]) if request.get("echo") is True else None


def read_answer_feedback(url: str, model: str, limit: int | None = None) -> AnswerSet:
    """``model``'s logged answers with their feedback, for training an answer verifier from traffic.

    Needs ``log.bodies: full`` (prompt text, request and response bodies on the request row). Each pair is
    the one a cascade judges (`_judged`): a legacy completion's generated text, without the prompt it echoes,
    against the prompt its first choice answers. An answer counts as acceptable when its mean feedback score
    is at least 0.5.
    """
    from router.offline.verifier_train import AnswerSet

    def query(req: sa.Table, fb: sa.Table) -> sa.Select[Any]:
        return (
            sa.select(req.c.id, req.c.endpoint, req.c.prompt_text, req.c.request_body, req.c.response_body,
                      sa.func.avg(fb.c.score).label("score"))
            .select_from(fb.join(req, fb.c.request_id == req.c.id))
            .where(req.c.served_model == model, req.c.prompt_text.is_not(None),
                   req.c.response_body.is_not(None), fb.c.score.is_not(None))
            .group_by(req.c.id, req.c.endpoint, req.c.prompt_text, req.c.request_body, req.c.response_body)
            .order_by(req.c.id)
        )

    prompts: list[str] = []
    answers: list[str] = []
    labels: list[float] = []
    for r in _fetch(url, query, limit):
        judged = _judged(r)
        text = None if judged is None else logged_answer_text(str(r.response_body), judged[1])
        if judged is None or text is None:
            continue
        prompts.append(judged[0])
        answers.append(text)
        labels.append(1.0 if unit_reward(r.score) >= 0.5 else 0.0)
    if not prompts:
        raise ValueError(f"no logged answers of {model!r} with feedback and bodies (log.bodies: full) in the database")
    return AnswerSet(model, prompts, answers, np.array(labels), np.full(len(labels), np.nan))
