"""A draft policy judged before it goes live: its decision on one request, and its off-policy
estimate on the live policy's logged traffic.

The logged rows are the live policy's requests with feedback and a logged propensity (the
probability the live policy had of its choice). A row's action is the model the live policy chose
(``chosen_model``), not the one that answered: after a fallback they differ, and the propensity is
the chosen one's; the reward is the feedback the request got, whoever answered. Rows logged before
the chosen model was recorded count the answering model as chosen. The draft's own ``decide()`` runs
on each row's features (its prompt text when the log keeps it, else a stand-in of the logged length); where the
draft is randomised (a bandit), a few seeded draws give its probabilities. ``router/ope.py`` turns
that into IPS, SNIPS and doubly robust estimates of mean feedback and cost, with 95% intervals and
the effective sample size of the importance weights.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from common.types import RequestFeatures
from policies.schema import Policy
from requestlog import tables
from router import ope
from router.decide import decide
from router.protocols import Plugins
from router.signals import Signals

MAX_ROWS = 2000
DRAWS = 8


@dataclass
class Logged:
    model: str  # the logged action: the model the live policy chose (what ``propensity`` is of)
    propensity: float
    prompt_text: str | None
    prompt_tokens: int | None
    cost: float
    score: float


async def logged_traffic(
    engine: AsyncEngine, policy: str, days: float = 30.0, limit: int = MAX_ROWS
) -> list[Logged]:
    r, f = tables.requests, tables.feedback
    since = datetime.now(UTC) - timedelta(days=days)
    action = sa.func.coalesce(r.c.chosen_model, r.c.served_model)  # older rows: the answering model
    recent = (
        sa.select(r.c.id, action.label("action"), r.c.propensity, r.c.prompt_text, r.c.prompt_tokens, r.c.cost_usd)
        .where(r.c.policy == policy, r.c.created_at >= since, r.c.propensity > 0, action.is_not(None))
        .where(sa.exists().where(f.c.request_id == r.c.id))
        .order_by(r.c.created_at.desc())
        .limit(limit)
        .subquery()
    )
    stmt = (
        sa.select(recent, sa.func.avg(f.c.score).label("score"))
        .join(f, f.c.request_id == recent.c.id)
        .group_by(*recent.c)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        Logged(
            x.action,
            float(x.propensity),
            x.prompt_text,
            x.prompt_tokens,
            float(x.cost_usd or 0.0),
            float(x.score),
        )
        for x in rows
    ]


def prompt_of(row: Logged) -> str:
    """The logged prompt, or a stand-in of its logged length when the log keeps no bodies."""
    return row.prompt_text or " ".join(["word"] * max(1, row.prompt_tokens or 1))


def _estimates(
    actions: np.ndarray, props: np.ndarray, rewards: np.ndarray, pi: np.ndarray
) -> list[dict[str, Any]]:
    q = ope.tabular_reward_model(actions, rewards, pi.shape[1])
    out = []
    for est in (
        ope.ips(actions, props, rewards, pi),
        ope.snips(actions, props, rewards, pi),
        ope.doubly_robust(actions, props, rewards, pi, q),
    ):
        out.append({"method": est.method, "value": est.value, "lo": est.lo, "hi": est.hi, "se": est.se})
    return out


def estimate(
    draft: Policy,
    rows: list[Logged],
    deployments: list[Any],
    signals: Signals,
    plugins: Plugins,
    featurize: Callable[[str], RequestFeatures],
) -> dict[str, Any]:
    """The draft's off-policy estimate on ``rows`` (CPU-bound: run it in a thread). ``featurize``
    turns a logged prompt into the request features the wire format would have produced."""
    if not rows:
        return {"rows": 0, "note": "No logged requests of the live policy with feedback and propensity yet."}
    models = sorted({d.model for d in deployments} | {r.model for r in rows})
    index = {m: i for i, m in enumerate(models)}
    pi = np.zeros((len(rows), len(models)))
    now = datetime.now(UTC)
    for i, row in enumerate(rows):
        feats = featurize(prompt_of(row))
        for k in range(DRAWS):
            d = decide(feats, draft, deployments, signals, random.Random(i * DRAWS + k), now, plugins=plugins)
            if d.candidates:
                pi[i, index[d.candidates[0].model]] = max(pi[i, index[d.candidates[0].model]], d.propensity)
            if d.propensity >= 1.0 or not d.candidates:
                break
        total = pi[i].sum()
        if total > 1.0:
            pi[i] /= total
    actions = np.array([index[r.model] for r in rows])
    props = np.array([r.propensity for r in rows])
    quality = np.array([r.score for r in rows])
    cost = np.array([r.cost for r in rows])
    w = ope.importance_weights(actions, props, pi)
    ess = float(w.sum() ** 2 / (w * w).sum()) if (w * w).sum() > 0 else 0.0
    return {
        "rows": len(rows),
        "effective_sample_size": ess,
        "support": float((w > 0).mean()),
        "quality": _estimates(actions, props, quality, pi),
        "cost": _estimates(actions, props, cost, pi),
        "live": {"mean_feedback": float(quality.mean()), "mean_cost_usd": float(cost.mean())},
    }
