"""Feedback is idempotent per (request, source) and reaches the bandit that made the decision;
every bandit decision logs the propensity of its choice."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from backends.fake_provider import FakeProviderThread
from router import ope
from router.offline.feedback_db import read_logged_decisions
from tests.support.gateway import dep, settings
from tests.support.harness import running_gateway
from tests.support.wait import wait_until

BANDIT = """
name: explore
selector: {type: bandit, bandit: default, arms: models}
fallbacks: {triggers: [5xx, timeout, connection]}
"""


async def test_bandit_decisions_log_propensity_and_feedback_updates_the_bandit(
    sqlite_url: str, tmp_path: Path
) -> None:
    with FakeProviderThread() as fp:
        deps = [dep("a", "model-a", fp.base_url), dep("b", "model-b", fp.base_url)]
        with running_gateway(settings(tmp_path, sqlite_url, deps)) as gw:
            assert httpx.put(gw.base_url + "/admin/api/policies/explore", content=BANDIT,
                             headers={"content-type": "application/yaml"}).status_code == 201
            rids = []
            for i in range(12):
                r = httpx.post(gw.base_url + "/v1/chat/completions",
                               json={"model": "explore", "messages": [{"role": "user", "content": f"q{i}"}]})
                assert r.status_code == 200
                rids.append((r.headers["x-request-id"], r.json()["model"]))
            for rid, model in rids:
                score = 1.0 if model == "model-a" else 0.0
                f = httpx.post(gw.base_url + "/v1/feedback", json={"request_id": rid, "score": score})
                assert f.status_code == 201 and f.json()["status"] == "recorded"
            again = httpx.post(gw.base_url + "/v1/feedback", json={"request_id": rids[0][0], "score": 0.3})
            assert again.status_code == 200 and again.json()["status"] == "duplicate"
            thumbs = httpx.post(gw.base_url + "/v1/feedback",
                                json={"request_id": rids[0][0], "thumbs": "up", "source": "ui"})
            assert thumbs.json()["status"] == "recorded"
            unknown = httpx.post(gw.base_url + "/v1/feedback", json={"request_id": "nope", "score": 1})
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
            bad = httpx.post(gw.base_url + "/v1/feedback", json={"request_id": "x", "score": 3})
            assert bad.status_code == 400
            bandit = gw.services.router.plugins.bandits["default"]
            stats = bandit.to_dict()["arms"]
            assert stats["model-a"]["n"] + stats["model-b"]["n"] == 13  # 12 scores + 1 thumbs (other source)
            await gw.acall(gw.services.sink.flush())
    engine = create_async_engine(sqlite_url)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text(
            "SELECT propensity, policy, policy_version, route_reason FROM requests WHERE policy = 'explore'"))).all()
        fb = (await conn.execute(sa.text("SELECT count(*) FROM feedback"))).scalar()
    await engine.dispose()
    assert len(rows) == 12 and fb == 13
    assert all(0 < r[0] <= 1 for r in rows) and all(r[2] == 1 for r in rows)


async def test_feedback_on_a_fallbacks_answer_never_rewards_the_arm_that_failed(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The bandit chose model-a, model-a failed and model-b's answer reached the user: the user's
    feedback is about model-b's answer, so model-a learns nothing from it (crediting it would reward a
    broken deployment for its fallback's answers, and route ever more traffic to it). The row does not
    name a bandit decision that did not answer; rows whose chosen arm answered do."""
    with FakeProviderThread() as fa, FakeProviderThread() as fb:
        deps = [dep("a", "model-a", fa.base_url), dep("b", "model-b", fb.base_url)]
        no_breaker = {"consecutive_failures": 0, "min_requests": 10_000, "cooldown_s": 0.5, "window_s": 10}
        with running_gateway(settings(tmp_path, sqlite_url, deps, breaker=no_breaker)) as gw:
            assert httpx.put(gw.base_url + "/admin/api/policies/explore", content=BANDIT,
                             headers={"content-type": "application/yaml"}).status_code == 201
            fa.set_faults("500")  # every answer comes from model-b
            gw.services.router.rng = random.Random(4)  # the bandit's draws: model-a is chosen now and then
            arms: dict[str, str] = {}
            for i in range(40):
                r = httpx.post(gw.base_url + "/v1/chat/completions",
                               json={"model": "explore", "messages": [{"role": "user", "content": f"q{i}"}]})
                assert r.status_code == 200 and r.headers["x-hybridgate-deployment"] == "b"
                reason = r.headers["x-hybridgate-route-reason"]
                arms[r.headers["x-request-id"]] = reason.split("arm=")[1].split()[0]
                f = httpx.post(gw.base_url + "/v1/feedback", json={"request_id": r.headers["x-request-id"],
                                                                    "score": 1.0})
                assert f.status_code == 201
                if sum(a == "model-a" for a in arms.values()) >= 3:
                    break
            chose_a = sum(a == "model-a" for a in arms.values())
            assert chose_a >= 3
            stats = gw.services.router.plugins.bandits["default"].to_dict()["arms"]
            assert stats.get("model-a", {}).get("n", 0) == 0
            assert stats["model-b"]["n"] == len(arms) - chose_a
            await gw.acall(gw.services.sink.flush())
    engine = create_async_engine(sqlite_url)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text(
            "SELECT id, bandit, propensity FROM requests WHERE policy = 'explore'"))).all()
    await engine.dispose()
    for rid, bandit, propensity in rows:
        logged = json.loads(bandit) if isinstance(bandit, str) else bandit
        assert 0 < propensity <= 1
        assert (logged is None) == (arms[rid] == "model-a")
        assert logged is None or logged["arm"] == "model-b"


async def test_a_fallbacks_answer_is_logged_and_evaluated_under_the_arm_the_bandit_chose(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The bandit chose model-a with probability p, model-a failed and model-b answered. The row logs
    model-a as the chosen arm, with p, beside model-b as the answering model; off-policy evaluation
    (the console's draft estimate, and the `router eval --logs-db` reader) takes model-a as the logged
    action and credits it with the request's reward. Taking the answering model as the action, with the
    chosen one's propensity, credits model-b instead: a draft that always picks model-a then scores 0."""
    with FakeProviderThread() as fa, FakeProviderThread() as fb:
        deps = [dep("a", "model-a", fa.base_url), dep("b", "model-b", fb.base_url)]
        no_breaker = {"consecutive_failures": 0, "min_requests": 10_000, "cooldown_s": 0.5, "window_s": 10}
        log = {"bodies": "full", "spool_dir": str(tmp_path / "spool"), "batch_max_ms": 10}  # prompts, for OPE
        with running_gateway(settings(tmp_path, sqlite_url, deps, breaker=no_breaker, log=log)) as gw:
            assert httpx.put(gw.base_url + "/admin/api/policies/explore", content=BANDIT,
                             headers={"content-type": "application/yaml"}).status_code == 201
            fa.set_faults("500")  # every answer comes from model-b
            gw.services.router.rng = random.Random(4)  # the bandit's draws: model-a is chosen now and then
            chosen: dict[str, tuple[str, float]] = {}  # request id -> (arm, propensity) the client was told
            for i in range(40):
                r = httpx.post(gw.base_url + "/v1/chat/completions",
                               json={"model": "explore", "messages": [{"role": "user", "content": f"q{i}"}]})
                assert r.status_code == 200 and r.headers["x-hybridgate-deployment"] == "b"
                arm = r.headers["x-hybridgate-route-reason"].split("arm=")[1].split()[0]
                chosen[r.headers["x-request-id"]] = (arm, float(r.headers["x-hybridgate-propensity"]))
                assert httpx.post(gw.base_url + "/v1/feedback", json={"request_id": r.headers["x-request-id"],
                                                                       "score": 1.0}).status_code == 201
                if sum(a == "model-a" for a, _ in chosen.values()) >= 3:
                    break
            assert sum(a == "model-a" for a, _ in chosen.values()) >= 3
            await gw.acall(gw.services.sink.flush())
            always_a = "name: explore\nselector: {type: fixed, order: [a, b]}\n"
            ev = httpx.post(gw.base_url + "/admin/api/console/policies/explore/evaluate",
                            json={"spec_yaml": always_a}, timeout=30)
            assert ev.status_code == 200, ev.text
            estimate = ev.json()["estimate"]
    engine = create_async_engine(sqlite_url)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.text(
            "SELECT id, chosen_model, chosen_deployment, propensity, served_model, deployment FROM requests "
            "WHERE policy = 'explore'"))).all()
    await engine.dispose()
    assert len(rows) == len(chosen)
    for rid, chosen_model, chosen_deployment, propensity, served, deployment in rows:
        arm, p = chosen[rid]
        assert (chosen_model, chosen_deployment) == (arm, {"model-a": "a", "model-b": "b"}[arm])
        assert propensity == pytest.approx(p, rel=1e-5) and 0 < propensity < 1
        assert (served, deployment) == ("model-b", "b")

    # The draft always picks model-a: IPS = mean over rows of 1{the bandit chose model-a} · reward / p.
    expected = sum(1.0 / p for a, p in chosen.values() if a == "model-a") / len(chosen)
    ips = next(e for e in estimate["quality"] if e["method"] == "ips")
    assert estimate["rows"] == len(chosen)
    assert ips["value"] == pytest.approx(expected) and expected > 0  # the answering model's view gives 0
    assert estimate["support"] == pytest.approx(sum(a == "model-a" for a, _ in chosen.values()) / len(chosen))

    logged = read_logged_decisions(sqlite_url, "explore")  # what `router eval --logs-db` evaluates on
    assert sorted((d["action"], d["served"]) for d in logged) == sorted((a, "model-b") for a, _ in chosen.values())
    models = ["model-a", "model-b"]
    target = np.tile([1.0, 0.0], (len(logged), 1))  # always model-a
    props = [d["propensity"] for d in logged]
    rewards = [d["reward"] for d in logged]
    new = ope.ips([models.index(str(d["action"])) for d in logged], props, rewards, target)
    old = ope.ips([models.index(str(d["served"])) for d in logged], props, rewards, target)
    assert new.value == pytest.approx(expected) and old.value == 0.0


def _redis_shared(redis_url: str, redis_prefix: str) -> dict[str, object]:
    """Settings of gateway processes that share state, bandits included, through one Redis."""
    return {"redis_url": redis_url, "redis_prefix": redis_prefix, "redis_timeout_s": 5.0,
            "redis_connect_timeout_s": 10.0, "router": {"bandit_store": "redis"}}


def _thompson_n(gw: object) -> float:
    """How many rewards a gateway's Thompson bandit has seen, over every arm."""
    return sum(a["n"] for a in gw.services.router.plugins.bandits["default"].to_dict()["arms"].values())  # type: ignore[attr-defined]


def test_bandit_learning_is_shared_between_gateway_processes_through_redis(
    sqlite_url: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    with FakeProviderThread() as fp:
        deps = [dep("a", "model-a", fp.base_url), dep("b", "model-b", fp.base_url)]
        shared = _redis_shared(redis_url, redis_prefix)
        with running_gateway(settings(tmp_path, sqlite_url, deps, **shared)) as g1, \
                running_gateway(settings(tmp_path, sqlite_url, deps, **shared)) as g2:
            assert httpx.put(g1.base_url + "/admin/api/policies/explore", content=BANDIT,
                             headers={"content-type": "application/yaml"}).status_code == 201
            _serve_and_rate(g1, g1, "explore", 6)
            wait_until(lambda: _thompson_n(g2) == 6)  # g2 never served these requests, yet its bandit learned


def test_contextual_bandit_policy_routes_and_learns(sqlite_url: str, tmp_path: Path) -> None:
    with FakeProviderThread() as fp:
        deps = [dep("a", "model-a", fp.base_url), dep("b", "model-b", fp.base_url)]
        with running_gateway(settings(tmp_path, sqlite_url, deps)) as gw:
            spec = BANDIT.replace("name: explore", "name: ctx").replace("bandit: default", "bandit: linucb")
            assert httpx.put(gw.base_url + "/admin/api/policies/ctx", content=spec,
                             headers={"content-type": "application/yaml"}).status_code == 201
            for i in range(5):
                r = httpx.post(gw.base_url + "/v1/chat/completions",
                               json={"model": "ctx", "messages": [{"role": "user", "content": "x" * (10 ** (i % 3))}]})
                assert r.status_code == 200 and 0 < float(r.headers["x-hybridgate-propensity"]) <= 1
                httpx.post(gw.base_url + "/v1/feedback", json={"request_id": r.headers["x-request-id"], "score": 1})
            state = gw.services.router.plugins.bandits["linucb"].to_dict()
            assert sum(state["n"].values()) == 5


def _serve_and_rate(gw_decides: object, gw_rates: object, policy: str, n: int) -> None:
    """``n`` requests decided by one gateway, each rated 1.0 through the other one."""
    for i in range(n):
        r = httpx.post(gw_decides.base_url + "/v1/chat/completions",  # type: ignore[attr-defined]
                       json={"model": policy, "messages": [{"role": "user", "content": f"q{i}"}]})
        assert r.status_code == 200, r.text
        # the other process finds the decision in the shared log: it is there once the sink has flushed
        gw_decides.call(gw_decides.services.sink.flush())  # type: ignore[attr-defined]
        f = httpx.post(gw_rates.base_url + "/v1/feedback",  # type: ignore[attr-defined]
                       json={"request_id": r.headers["x-request-id"], "score": 1.0})
        assert f.status_code == 201, f.text


def test_without_redis_bandits_learn_together_through_the_database(sqlite_url: str, tmp_path: Path) -> None:
    """Two processes, no Redis: feedback for a decision made by the first reaches the second, and
    each learns what the other was taught (Thompson counts and LinUCB's linear model alike)."""
    with FakeProviderThread() as fp:
        deps = [dep("a", "model-a", fp.base_url), dep("b", "model-b", fp.base_url)]
        with running_gateway(settings(tmp_path, sqlite_url, deps)) as g1, \
                running_gateway(settings(tmp_path, sqlite_url, deps)) as g2:
            ctx_spec = BANDIT.replace("name: explore", "name: ctx").replace("bandit: default", "bandit: linucb")
            for name, spec in (("explore", BANDIT), ("ctx", ctx_spec)):
                assert httpx.put(g1.base_url + f"/admin/api/policies/{name}", content=spec,
                                 headers={"content-type": "application/yaml"}).status_code == 201
            wait_until(lambda: g2.services.router.registry.active("ctx") is not None)
            _serve_and_rate(g1, g2, "explore", 4)  # decided by g1, rated at g2
            _serve_and_rate(g1, g1, "ctx", 3)

            def linucb_n(gw: object) -> int:
                return sum(gw.services.router.plugins.bandits["linucb"].to_dict()["n"].values())

            wait_until(lambda: _thompson_n(g1) == 4 and _thompson_n(g2) == 4 and linucb_n(g2) == 3)
            a1 = g1.services.router.plugins.bandits["linucb"].to_dict()
            a2 = g2.services.router.plugins.bandits["linucb"].to_dict()
            taught = [arm for arm, n in a1["n"].items() if n]
            assert taught and all(a2["n"][arm] == a1["n"][arm] for arm in taught)
            for arm in taught:
                b = a1["b"][arm]
                np.testing.assert_allclose(b, a2["b"][arm], atol=1e-12)
                np.testing.assert_allclose(a1["a_inv"][arm], a2["a_inv"][arm], atol=1e-12)


def test_feedback_at_another_process_teaches_the_deciding_bandit_through_redis(
    sqlite_url: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    with FakeProviderThread() as fp:
        deps = [dep("a", "model-a", fp.base_url), dep("b", "model-b", fp.base_url)]
        shared = _redis_shared(redis_url, redis_prefix)
        with running_gateway(settings(tmp_path, sqlite_url, deps, **shared)) as g1, \
                running_gateway(settings(tmp_path, sqlite_url, deps, **shared)) as g2:
            assert httpx.put(g1.base_url + "/admin/api/policies/explore", content=BANDIT,
                             headers={"content-type": "application/yaml"}).status_code == 201
            _serve_and_rate(g1, g2, "explore", 5)
            wait_until(lambda: _thompson_n(g1) == 5 and _thompson_n(g2) == 5)


SCORED = """
name: scored
selector: {type: bandit, bandit: linucb_scored, context_scorer: default}
"""


async def test_scored_contextual_bandit_logs_the_classifier_view_and_learns_from_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    from router.offline.artifacts import save_artifact
    from router.offline.datasets import read_csv
    from router.offline.train import TrainConfig, train_classifier
    from router.plugins import scored_context_vector
    from tests.support.verifier_data import STRONG, WEAK, arithmetic_problems, write_routellm

    data = write_routellm(tmp_path / "toy.csv", arithmetic_problems(120))
    save_artifact(train_classifier(read_csv(data), TrainConfig()), tmp_path / "clf")
    prompts = [p for p, *_ in arithmetic_problems(8, seed=5)]
    with FakeProviderThread() as fp:
        deps = [dep("cheap", "cheap-model", fp.base_url), dep("strong", "strong-model", fp.base_url)]
        cfg = settings(tmp_path, sqlite_url, deps, router={
            "artifact": str(tmp_path / "clf"), "model_aliases": {WEAK: "cheap-model", STRONG: "strong-model"}})
        with running_gateway(cfg) as gw:
            assert httpx.put(gw.base_url + "/admin/api/policies/scored", content=SCORED,
                             headers={"content-type": "application/yaml"}).status_code == 201
            served = []
            for p in prompts:
                r = httpx.post(gw.base_url + "/v1/chat/completions",
                               json={"model": "scored", "messages": [{"role": "user", "content": p}]})
                assert r.status_code == 200 and 0 < float(r.headers["x-hybridgate-propensity"]) <= 1
                served.append((r.headers["x-request-id"], r.headers["x-hybridgate-model"]))
            for rid, _ in served:
                f = httpx.post(gw.base_url + "/v1/feedback", json={"request_id": rid, "score": 1.0})
                assert f.status_code == 201
            bandit = gw.services.router.plugins.bandits["linucb_scored"]
            assert sum(bandit.to_dict()["n"].values()) == len(prompts)
            await gw.acall(gw.services.sink.flush())
    engine = create_async_engine(sqlite_url)
    async with engine.connect() as conn:
        logged = (await conn.execute(sa.text("SELECT bandit FROM requests WHERE policy = 'scored'"))).scalars().all()
    await engine.dispose()
    assert len(logged) == len(prompts)
    contexts = [(json.loads(b) if isinstance(b, str) else b)["context"] for b in logged]
    assert all(set(c["scores"]) == {"cheap-model", "strong-model"} for c in contexts)
    assert all("prompt_text" not in c for c in contexts)
    # every reward was learned with the vector the decision saw: b sums r·x over each arm's requests
    state = bandit.to_dict()
    for arm in ("cheap-model", "strong-model"):
        seen = [scored_context_vector(c, arm) for c, b in zip(contexts, logged, strict=True)
                if (json.loads(b) if isinstance(b, str) else b)["arm"] == arm]
        if seen:
            assert np.allclose(state["b"][arm], np.sum(seen, axis=0))
