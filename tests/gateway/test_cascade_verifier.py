"""A cascade judged by a trained answer verifier (no log-probabilities needed): through the real
gateway and the official SDK, a cheap answer whose arithmetic does not hold is escalated, a sound
one is kept, and a policy naming an unknown score is refused with the field named."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from backends.fake_provider import FakeProviderConfig, FakeProviderThread
from gateway import cli
from router.offline.artifacts import save_verifier
from router.offline.verifier_train import read_answers, train_verifier
from tests.support.gateway import dep, settings
from tests.support.harness import running_gateway
from tests.support.verifier_data import WEAK, arithmetic_problems, write_routellm

CHECKED = """
name: checked
selector: {type: fixed, order: [cheap]}
escalation: {first: [cheap], to: [strong], threshold: 0.5, score: verifier}
"""
QUESTION = [{"role": "user", "content": "Ann has 10 shells and finds 20 more. How many does she have now?"}]


@pytest.mark.parametrize(
    ("cheap_answer", "expect"),
    [("Step 1: 10 + 20 = 35.\nThe answer is 35.", "strong-model"),
     ("Step 1: 10 + 20 = 30.\nThe answer is 30.", "cheap-model")],
)
def test_cascade_escalates_answers_the_trained_verifier_distrusts(
    tmp_path: Path, sqlite_url: str, cheap_answer: str, expect: str
) -> None:
    verifier = train_verifier(read_answers([write_routellm(tmp_path / "toy.csv", arithmetic_problems(200))], WEAK), folds=3)
    save_verifier(verifier, tmp_path / "verifier")
    cheap_cfg = FakeProviderConfig(reply_mode="fixed", reply_text=cheap_answer)
    with FakeProviderThread(config=cheap_cfg) as cheap, FakeProviderThread() as strong:
        deployments = [dep("cheap", "cheap-model", cheap.base_url), dep("strong", "strong-model", strong.base_url)]
        cfg = settings(tmp_path, sqlite_url, deployments, router={"verifiers": {"default": str(tmp_path / "verifier")}})
        with running_gateway(cfg) as gw:
            assert httpx.put(gw.base_url + "/admin/api/policies/checked", content=CHECKED,
                             headers={"content-type": "application/yaml"}).status_code == 201
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(model="checked", messages=QUESTION)
            body = raw.parse()
            assert body.model == expect and raw.headers["x-hybridgate-model"] == expect
            reason = raw.headers["x-hybridgate-route-reason"]
            assert "verifier=" in reason and ("escalated" in reason) == (expect == "strong-model")
            assert strong.stats["total"] == (1 if expect == "strong-model" else 0)
            assert cheap.provider is not None and "logprobs" not in cheap.provider.requests[-1].body  # none needed
            metrics = httpx.get(gw.base_url + "/metrics").text
            outcome = "escalated" if expect == "strong-model" else "kept"
            assert f'hybridgate_escalations_total{{outcome="{outcome}",policy="checked",score="verifier"}} 1.0' in metrics
            assert 'hybridgate_route_decisions_total{model="cheap-model",policy="checked"} 1.0' in metrics
            assert 'hybridgate_decision_seconds_count{policy="checked"} 1.0' in metrics

            bad = httpx.put(gw.base_url + "/admin/api/policies/checked", content=CHECKED.replace("verifier}", "magic}"),
                            headers={"content-type": "application/yaml"})
            assert bad.status_code == 422 and "score" in bad.json()["error"]["message"]


def test_a_verifier_learned_from_logged_answers_and_feedback_judges_the_next_ones(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Traffic with feedback → `router train-verifier --from-db` → activation → the cascade escalates the
    kind of answer users rated badly. The echoing fake provider answers with the prompt's own sum."""
    with FakeProviderThread() as cheap, FakeProviderThread() as strong:
        deployments = [dep("cheap", "cheap-model", cheap.base_url), dep("strong", "strong-model", strong.base_url)]
        cfg = settings(tmp_path, sqlite_url, deployments,
                       log={"bodies": "full", "spool_dir": str(tmp_path / "spool"), "batch_max_ms": 10})
        with running_gateway(cfg) as gw:
            for i in range(40):
                a, b = 10 + i, 7 * i + 3
                wrong = i % 3 == 0
                text = f"So {a} + {b} = {a + b + (5 if wrong else 0)}.\nThe answer is {a + b}."
                r = httpx.post(gw.base_url + "/v1/chat/completions",
                               json={"model": "cheap-model", "messages": [{"role": "user", "content": text}]})
                fb = httpx.post(gw.base_url + "/v1/feedback",
                                json={"request_id": r.headers["x-request-id"], "score": 0.0 if wrong else 1.0})
                assert fb.status_code == 201
            gw.call(gw.services.sink.flush())
            out = tmp_path / "learned-verifier"
            # `hybridgate router train-verifier`, run in this process (a CLI process imports everything again)
            code = cli.main(["router", "train-verifier", "--from-db", sqlite_url.replace("+aiosqlite", ""),
                             "--model", "cheap-model", "--out", str(out)])
            assert code == 0, capsys.readouterr().err[-2000:]
            assert httpx.post(gw.base_url + "/admin/api/router/verifiers", json={"path": str(out)}).status_code == 201
            assert httpx.put(gw.base_url + "/admin/api/policies/checked", content=CHECKED,
                             headers={"content-type": "application/yaml"}).status_code == 201

            def served(text: str) -> str:
                r = httpx.post(gw.base_url + "/v1/chat/completions",
                               json={"model": "checked", "messages": [{"role": "user", "content": text}]})
                assert r.status_code == 200, r.text
                return r.headers["x-hybridgate-model"]

            assert served("So 300 + 45 = 345.\nThe answer is 345.") == "cheap-model"
            assert served("So 300 + 45 = 350.\nThe answer is 345.") == "strong-model"
