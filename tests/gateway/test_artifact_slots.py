"""Learned artifacts activated through the admin API reach every gateway process and survive a
restart: a classifier activated on one process serves a policy on another within seconds, and a
verifier activated on one judges cascades on the other. Bad activations get OpenAI-shaped errors."""

from __future__ import annotations

from pathlib import Path

import httpx

from backends.fake_provider import FakeProviderConfig, FakeProviderThread
from router.offline.artifacts import save_artifact, save_verifier
from router.offline.datasets import read_csv
from router.offline.train import TrainConfig, train_classifier
from router.offline.verifier_train import read_answers, train_verifier
from tests.support.gateway import dep, settings
from tests.support.harness import running_gateway
from tests.support.verifier_data import STRONG, WEAK, arithmetic_problems, write_routellm
from tests.support.wait import wait_until

SMART = """
name: smart
selector: {type: classifier, scorer: default, threshold: 0.5}
"""
CHECKED = """
name: checked
selector: {type: fixed, order: [cheap]}
escalation: {first: [cheap], to: [strong], threshold: 0.5, score: verifier}
"""
WRONG_SUM = "Step 1: 10 + 20 = 35.\nThe answer is 35."


def test_activations_reach_every_process_and_a_restarted_one(sqlite_url: str, tmp_path: Path) -> None:
    data = write_routellm(tmp_path / "toy.csv", arithmetic_problems(160))
    save_artifact(train_classifier(read_csv(data), TrainConfig()), tmp_path / "clf")
    save_verifier(train_verifier(read_answers([data], WEAK), folds=3), tmp_path / "ver")
    with FakeProviderThread(config=FakeProviderConfig(reply_mode="fixed", reply_text=WRONG_SUM)) as cheap, \
            FakeProviderThread() as strong:
        deps = [dep("cheap", "cheap-model", cheap.base_url), dep("strong", "strong-model", strong.base_url)]
        aliases = {"router": {"model_aliases": {WEAK: "cheap-model", STRONG: "strong-model"}}}
        with running_gateway(settings(tmp_path, sqlite_url, deps, **aliases)) as g1, \
                running_gateway(settings(tmp_path, sqlite_url, deps, **aliases)) as g2:
            for name, spec in (("smart", SMART), ("checked", CHECKED)):
                assert httpx.put(f"{g1.base_url}/admin/api/policies/{name}", content=spec,
                                 headers={"content-type": "application/yaml"}).status_code == 201
            assert "default" not in g2.services.router.plugins.scorers
            act = httpx.post(g1.base_url + "/admin/api/router/artifacts", json={"path": str(tmp_path / "clf")})
            assert act.status_code == 201 and set(act.json()["models"]) == {WEAK, STRONG}
            ver = httpx.post(g1.base_url + "/admin/api/router/verifiers", json={"path": str(tmp_path / "ver")})
            assert ver.status_code == 201 and ver.json() == {"verifier": "default", "version": ver.json()["version"],
                                                             "models": [WEAK]}
            wait_until(lambda: "default" in g2.services.router.plugins.scorers
                      and "default" in g2.services.router.plugins.verifiers)
            chat = {"messages": [{"role": "user", "content": "Ann has 10 shells and finds 20 more. How many?"}]}
            r = httpx.post(g2.base_url + "/v1/chat/completions", json={"model": "smart", **chat})
            assert r.status_code == 200 and "classifier" in r.headers["x-hybridgate-route-reason"]
            r = httpx.post(g2.base_url + "/v1/chat/completions", json={"model": "checked", **chat})
            assert r.headers["x-hybridgate-model"] == "strong-model"  # g2's verifier distrusted the wrong sum
            assert "escalated" in r.headers["x-hybridgate-route-reason"]

            for body, param in (({"path": str(tmp_path / "missing")}, "path"), ({}, "path"),
                                ({"path": str(tmp_path / "ver"), "name": "a:b"}, "name")):
                bad = httpx.post(g1.base_url + "/admin/api/router/verifiers", json=body)
                assert bad.status_code == 400 and bad.json()["error"]["param"] == param
            wrong_kind = httpx.post(g1.base_url + "/admin/api/router/artifacts", json={"path": str(tmp_path / "ver")})
            assert wrong_kind.status_code == 400 and wrong_kind.json()["error"]["code"] == "invalid_artifact"
        # a process started afterwards, with nothing in its config, loads what was activated
        with running_gateway(settings(tmp_path, sqlite_url, deps, **aliases)) as g3:
            plugins = g3.services.router.plugins
            assert "default" in plugins.scorers and "default" in plugins.verifiers


async def test_an_activation_without_the_database_serves_here_and_says_the_others_were_not_told(
    tmp_path: Path,
) -> None:
    import pytest
    from sqlalchemy.ext.asyncio import create_async_engine

    from router.protocols import Plugins
    from service.artifact_slots import ArtifactSlots, RegistryUnavailable

    data = write_routellm(tmp_path / "toy.csv", arithmetic_problems(60))
    save_verifier(train_verifier(read_answers([data], WEAK), folds=3), tmp_path / "ver")
    engine = create_async_engine("sqlite+aiosqlite:///" + str(tmp_path / "no-such-dir" / "log.db"))
    plugins = Plugins(scorers={}, bandits={}, verifiers={})
    slots = ArtifactSlots(engine, plugins, {}, root=tmp_path)
    try:
        with pytest.raises(RegistryUnavailable):
            await slots.activate("verifier:default", str(tmp_path / "ver"))
        assert "default" in plugins.verifiers  # this process serves it anyway
        await slots.sync()  # an unreachable database: keeps what is loaded, no error
        assert "default" in plugins.verifiers
    finally:
        await engine.dispose()
