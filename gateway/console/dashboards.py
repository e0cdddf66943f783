"""The console's dashboards: each one a table (with the chart drawn from it) computed from rollups.

Every dashboard answers :class:`Query` (time range and filters) with a :class:`Table`: column
names, the raw rows (numbers, for charts), the same rows as display strings (the HTML table and
the CSV export print exactly these), and a chart spec for the page's Chart.js. Request dashboards
filter by policy, key, user, team and model; deployment dashboards by model (its deployments).
Requests nothing served (every attempt failed) are counted under "(none served)", never under the
model or policy name the client asked for. Every figure covers exactly [since, until), as the request
log does for the same range (`requestlog.rollups.spans`); hourly or daily rows at either end of a range
that starts or ends mid-hour cover only its part of that hour.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from requestlog import tables
from requestlog.rollups import UNSERVED, Grain, aggregate, mean_ci, quantile

RANGES = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


@dataclass(frozen=True)
class Query:
    since: datetime
    until: datetime
    policy: str | None = None
    api_key_id: str | None = None
    user: str | None = None
    team: str | None = None
    model: str | None = None
    deployments: tuple[str, ...] | None = None  # the model filter, as the deployments serving it

    @property
    def request_filters(self) -> dict[str, str | None]:
        return {
            "policy": self.policy,
            "api_key_id": self.api_key_id,
            "user": self.user,
            "team": self.team,
            "model": self.model,
        }

    @property
    def grain(self) -> Grain:
        return "hour" if self.until - self.since <= timedelta(days=3) else "day"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    chart: dict[str, Any]
    notes: str = ""
    cells: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cells = [[cell(v) for v in row] for row in self.rows]

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "cells": self.cells,
            "chart": self.chart,
            "notes": self.notes,
        }

    def csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows(self.cells)
        return out.getvalue()


def cell(v: Any) -> str:
    """How a value is shown in the table and written to CSV."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return ""
        return f"{v:.6g}" if abs(v) < 1e6 else f"{v:.2f}"
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    return str(v)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


NONE_SERVED = "(none served)"
"""How the dashboards name the model of requests nothing served (every attempt failed)."""


def _label(v: str) -> str:
    return v or "(none)"


def _model_label(v: str) -> str:
    return NONE_SERVED if v == UNSERVED else v


# ---------------------------------------------------------------------------------------- requests

_Q_SUMS = ("requests", "cost_usd", "fb_n", "fb_sum", "fb_sumsq")


async def cost_quality(conn: AsyncConnection, q: Query) -> Table:
    rows: list[list[Any]] = []
    points: dict[str, list[dict[str, Any]]] = {"model": [], "policy": []}
    both = await aggregate(
        conn, "requests", q.since, q.until, ["model", "policy"], _Q_SUMS, q.request_filters
    )
    for kind in ("model", "policy"):
        totals: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(_Q_SUMS, 0))
        for r in both:
            acc = totals[r[kind]]
            for s in _Q_SUMS:
                acc[s] += r[s]
        agg = [{kind: k, **v} for k, v in totals.items()]
        for r in sorted(agg, key=lambda r: r[kind]):
            mean, lo, hi = mean_ci(r["fb_n"], r["fb_sum"], r["fb_sumsq"])
            points[kind].append(
                {
                    "name": _model_label(r[kind]) if kind == "model" else _label(r[kind]),
                    "requests": r["requests"],
                    "cost": _ratio(r["cost_usd"], r["requests"]),
                    "quality": mean,
                    "lo": lo,
                    "hi": hi,
                    "n": r["fb_n"],
                }
            )
    # requests nothing served are no model's cost or quality: listed, never charted or on the frontier
    scored = [
        p
        for p in points["model"]
        if p["quality"] is not None and p["cost"] is not None and p["name"] != NONE_SERVED
    ]
    frontier = {
        p["name"]
        for p in scored
        if not any(
            o["cost"] <= p["cost"]
            and o["quality"] >= p["quality"]
            and (o["cost"] < p["cost"] or o["quality"] > p["quality"])
            for o in scored
        )
    }
    for kind in ("model", "policy"):
        for p in points[kind]:
            rows.append(
                [
                    kind,
                    p["name"],
                    p["requests"],
                    p["cost"],
                    p["quality"],
                    p["lo"],
                    p["hi"],
                    p["n"],
                    kind == "model" and p["name"] in frontier,
                ]
            )
    front = sorted((p for p in scored if p["name"] in frontier), key=lambda p: p["cost"])
    chart = {
        "type": "scatter",
        "x": "cost per request (USD)",
        "y": "mean feedback",
        "datasets": [
            {
                "label": "models",
                "points": [{"x": p["cost"], "y": p["quality"], "label": p["name"]} for p in scored],
            },
            {
                "label": "frontier",
                "line": True,
                "points": [{"x": p["cost"], "y": p["quality"], "label": p["name"]} for p in front],
            },
            {
                "label": "policies",
                "points": [
                    {"x": p["cost"], "y": p["quality"], "label": p["name"]}
                    for p in points["policy"]
                    if p["quality"] is not None and p["cost"] is not None
                ],
            },
        ],
    }
    return Table(
        "Cost vs quality per model and policy",
        [
            "kind",
            "name",
            "requests",
            "cost_per_request_usd",
            "mean_feedback",
            "ci95_lo",
            "ci95_hi",
            "feedback_n",
            "frontier",
        ],
        rows,
        chart,
        "Quality is the mean feedback score with its 95% interval and the count behind it; the frontier "
        "holds the models no other model beats on both cost and quality. Requests nothing served are "
        f"listed as {NONE_SERVED}, off the chart.",
    )


async def over_time(conn: AsyncConnection, q: Query) -> Table:
    agg = await aggregate(
        conn,
        "requests",
        q.since,
        q.until,
        [],
        ("requests", "cost_usd", "fb_n", "fb_sum"),
        q.request_filters,
        grain=q.grain,
    )
    rows = []
    for r in sorted(agg, key=lambda r: r["bucket"]):
        rows.append(
            [
                r["bucket"],
                r["requests"],
                r["cost_usd"],
                _ratio(r["cost_usd"], r["requests"]),
                _ratio(r["fb_sum"], r["fb_n"]),
                r["fb_n"],
            ]
        )
    chart = {
        "type": "line",
        "x": q.grain,
        "labels": [cell(r[0]) for r in rows],
        "datasets": [
            {"label": "cost per request (USD)", "data": [r[3] for r in rows], "axis": "y"},
            {"label": "mean feedback", "data": [r[4] for r in rows], "axis": "y2"},
        ],
    }
    return Table(
        "Quality and cost per request over time",
        [q.grain, "requests", "cost_usd", "cost_per_request_usd", "mean_feedback", "feedback_n"],
        rows,
        chart,
    )


async def routing_mix(conn: AsyncConnection, q: Query) -> Table:
    agg = await aggregate(
        conn,
        "requests",
        q.since,
        q.until,
        ["policy", "model"],
        ("requests",),
        q.request_filters,
        grain=q.grain,
    )
    per_policy: dict[tuple[Any, str], int] = defaultdict(int)
    for r in agg:
        per_policy[(r["bucket"], r["policy"])] += r["requests"]
    rows = [
        [
            r["bucket"],
            _label(r["policy"]),
            _model_label(r["model"]),
            r["requests"],
            r["requests"] / per_policy[(r["bucket"], r["policy"])],
        ]
        for r in sorted(agg, key=lambda r: (r["bucket"], r["policy"], r["model"]))
    ]
    labels = sorted({r[0] for r in rows})
    series: dict[tuple[str, str], dict[Any, float]] = defaultdict(dict)
    for b, pol, model, _n, share in rows:
        series[(pol, model)][b] = share
    chart = {
        "type": "bar",
        "stacked": True,
        "x": q.grain,
        "labels": [cell(b) for b in labels],
        "datasets": [
            {"label": f"{pol} → {model}", "stack": pol, "data": [v.get(b, 0) for b in labels]}
            for (pol, model), v in sorted(series.items())
        ],
    }
    return Table(
        "Routing mix per policy over time",
        [q.grain, "policy", "model", "requests", "share_of_policy"],
        rows,
        chart,
    )


def _spend(dim: str, title: str) -> Callable[[AsyncConnection, Query], Awaitable[Table]]:
    async def run(conn: AsyncConnection, q: Query) -> Table:
        agg = await aggregate(
            conn,
            "requests",
            q.since,
            q.until,
            [dim],
            ("requests", "cost_usd", "prompt_tokens", "completion_tokens"),
            q.request_filters,
        )
        name = _model_label if dim == "model" else _label
        rows = [
            [name(r[dim]), r["requests"], r["cost_usd"], r["prompt_tokens"], r["completion_tokens"]]
            for r in sorted(agg, key=lambda r: -r["cost_usd"])
        ]
        chart = {
            "type": "bar",
            "x": dim,
            "labels": [r[0] for r in rows],
            "datasets": [{"label": "spend (USD)", "data": [r[2] for r in rows]}],
        }
        return Table(title, [dim, "requests", "cost_usd", "prompt_tokens", "completion_tokens"], rows, chart)

    return run


# ---------------------------------------------------------------------------------------- deployments


async def latency(conn: AsyncConnection, q: Query) -> Table:
    hist = await aggregate(conn, "latency", q.since, q.until, ["deployment", "metric", "bin"], ("n",))
    per: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for r in hist:
        if q.deployments is None or r["deployment"] in q.deployments:
            per[(r["deployment"], r["metric"])][r["bin"]] = r["n"]
    rows = []
    for dep in sorted({d for d, _ in per}):
        lat, ttft = per.get((dep, "latency"), {}), per.get((dep, "ttft"), {})
        rows.append(
            [
                dep,
                sum(lat.values()),
                quantile(lat, 0.5),
                quantile(lat, 0.95),
                quantile(lat, 0.99),
                quantile(ttft, 0.5),
                quantile(ttft, 0.95),
                quantile(ttft, 0.99),
            ]
        )
    chart = {
        "type": "bar",
        "x": "deployment",
        "labels": [r[0] for r in rows],
        "datasets": [
            {"label": name, "data": [r[i] for r in rows]}
            for i, name in (
                (2, "latency p50 (ms)"),
                (3, "latency p95 (ms)"),
                (4, "latency p99 (ms)"),
                (6, "TTFT p95 (ms)"),
            )
        ],
    }
    return Table(
        "Latency and TTFT per deployment",
        [
            "deployment",
            "ok_attempts",
            "latency_p50_ms",
            "latency_p95_ms",
            "latency_p99_ms",
            "ttft_p50_ms",
            "ttft_p95_ms",
            "ttft_p99_ms",
        ],
        rows,
        chart,
        "Quantiles of successful attempts from 3%-wide histogram bins (each value is its bin's upper edge).",
    )


async def reliability(conn: AsyncConnection, q: Query) -> Table:
    agg = await aggregate(conn, "attempts", q.since, q.until, ["deployment", "kind", "status"], ("n",))
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in agg:
        if q.deployments is None or r["deployment"] in q.deployments:
            d = per[r["deployment"]]
            d["attempts"] += r["n"]
            d[r["kind"]] += r["n"]
            if r["status"] != "ok":
                d["errors"] += r["n"]
    rows = []
    for dep in sorted(per):
        d = per[dep]
        n = d["attempts"]
        rows.append([dep, n, d["errors"] / n, d["retry"] / n, d["fallback"] / n, d["escalation"] / n])
    chart = {
        "type": "bar",
        "x": "deployment",
        "labels": [r[0] for r in rows],
        "datasets": [
            {"label": name, "data": [r[i] for r in rows]}
            for i, name in (
                (2, "error rate"),
                (3, "retry rate"),
                (4, "fallback rate"),
                (5, "escalation rate"),
            )
        ],
    }
    return Table(
        "Errors, retries, fallbacks and escalations per deployment",
        ["deployment", "attempts", "error_rate", "retry_rate", "fallback_rate", "escalation_rate"],
        rows,
        chart,
        "Rates are shares of the deployment's attempts: a retry repeats the same deployment, a "
        "fallback moves on after an error, an escalation after an answer (cascade).",
    )


_STATE_Y = {"closed": 0.0, "half_open": 0.5, "open": 1.0}


async def breakers(conn: AsyncConnection, q: Query) -> Table:
    ev = tables.breaker_events
    stmt = (
        sa.select(ev.c.at, ev.c.deployment, ev.c.state)
        .where(ev.c.at >= q.since, ev.c.at < q.until)
        .order_by(ev.c.at)
        .limit(5000)
    )
    if q.deployments is not None:
        stmt = stmt.where(ev.c.deployment.in_(q.deployments))
    rows = [[r.at, r.deployment, r.state] for r in await conn.execute(stmt)]
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for at, dep, state in rows:
        series[dep].append({"x": at.isoformat(), "y": _STATE_Y.get(state, 0.0)})
    chart = {
        "type": "step",
        "x": "time",
        "y": "state (0 closed, 0.5 half-open, 1 open)",
        "datasets": [{"label": d, "points": p} for d, p in sorted(series.items())],
    }
    return Table("Breaker state over time", ["at", "deployment", "state"], rows, chart)


DASHBOARDS: dict[str, Callable[[AsyncConnection, Query], Awaitable[Table]]] = {
    "cost-quality": cost_quality,
    "over-time": over_time,
    "routing-mix": routing_mix,
    "spend-by-key": _spend("api_key_id", "Spend by key"),
    "spend-by-user": _spend("user", "Spend by user"),
    "spend-by-team": _spend("team", "Spend by team"),
    "spend-by-model": _spend("model", "Spend by model"),
    "latency": latency,
    "reliability": reliability,
    "breakers": breakers,
}
