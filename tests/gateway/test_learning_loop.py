"""The learning loop end to end: logged traffic + feedback → `hybridgate router train --from-db` →
artifact activated without restart → a classifier policy routes easy prompts to the cheap model and
hard ones to the strong model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from backends.fake_provider import FakeProviderThread
from gateway import cli
from tests.support.gateway import dep, settings
from tests.support.harness import running_gateway

POLICY = """
name: smart
selector: {type: classifier, scorer: default, threshold: 0.5, lambda: 0.3}
fallbacks: {triggers: [5xx, timeout, connection]}
"""

EASY = ["what is two plus two", "say hello", "name a color", "spell cat", "count to three", "what day is it"]
HARD = ["prove the riemann hypothesis", "derive the navier stokes solution", "factor this rsa modulus",
        "solve this olympiad inequality", "prove this topology theorem", "find the galois group"]


def test_feedback_trains_a_classifier_that_routes_by_difficulty(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProviderThread() as fp:
        deps = [dep("cheap", "cheap-model", fp.base_url, pricing={"input_per_mtok": 1, "output_per_mtok": 1}),
                dep("strong", "strong-model", fp.base_url, pricing={"input_per_mtok": 10, "output_per_mtok": 10})]
        s = settings(tmp_path, sqlite_url, deps, log={"bodies": "full", "spool_dir": str(tmp_path / "sp"),
                                                       "batch_max_ms": 10})
        with running_gateway(s) as gw:
            url = gw.base_url + "/v1/chat/completions"
            for rep in range(4):
                for kind, prompts in (("easy", EASY), ("hard", HARD)):
                    for p in prompts:
                        for model in ("cheap-model", "strong-model"):
                            r = httpx.post(url, json={"model": model,
                                                      "messages": [{"role": "user", "content": f"{p} #{rep}"}]})
                            ok = 1.0 if (kind == "easy" or model == "strong-model") else 0.0
                            fb = httpx.post(gw.base_url + "/v1/feedback",
                                            json={"request_id": r.headers["x-request-id"], "score": ok})
                            assert fb.status_code == 201
            gw.call(gw.services.sink.flush())
            art = tmp_path / "artifact"
            # the `hybridgate router` commands, run in this process (a CLI process imports everything again)
            code = cli.main(["router", "train", "--from-db", sqlite_url.replace("+aiosqlite", ""), "--out", str(art)])
            assert code == 0, capsys.readouterr().err[-2000:]
            capsys.readouterr()
            code = cli.main(["router", "eval", "--artifact", str(art), "--logs-db", sqlite_url.replace("+aiosqlite", "")])
            out, err = capsys.readouterr()
            assert code == 0, err[-2000:]
            ope = json.loads(out)["off_policy_db"]
            assert ope["n"] == 96  # every logged decision with feedback, its propensity and reward
            assert 0.0 <= ope["snips"]["value"] <= 1.0 and ope["dr"]["lo"] <= ope["dr"]["value"] <= ope["dr"]["hi"]
            act = httpx.post(gw.base_url + "/admin/api/router/artifacts", json={"path": str(art)})
            assert act.status_code == 201, act.text
            assert set(act.json()["models"]) == {"cheap-model", "strong-model"}
            assert httpx.put(gw.base_url + "/admin/api/policies/smart", content=POLICY,
                             headers={"content-type": "application/yaml"}).status_code == 201

            def served(prompt: str) -> str:
                r = httpx.post(url, json={"model": "smart", "messages": [{"role": "user", "content": prompt}]})
                assert r.status_code == 200, r.text
                assert "classifier" in r.headers["x-hybridgate-route-reason"], r.headers["x-hybridgate-route-reason"]
                return r.headers["x-hybridgate-model"]

            assert served("say hello #7") == "cheap-model"
            assert served("prove the riemann hypothesis #7") == "strong-model"
