"""A cascade judged by a trained answer verifier (no log-probabilities needed): through the real
gateway and the official SDK, a cheap answer whose arithmetic does not hold is escalated, a sound
one is kept, and a policy naming an unknown score is refused with the field named."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from backends.fake_provider import FakeProviderConfig, FakeProviderThread
from router.offline.artifacts import save_verifier
from router.offline.verifier_train import read_answers, train_verifier
from tests.gateway.harness import running_gateway
from tests.gateway.test_reliability import dep, settings
from tests.router_learning.test_verifier import WEAK, _problems, _write_routellm

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
    verifier = train_verifier(read_answers([_write_routellm(tmp_path / "toy.csv", _problems(200))], WEAK), folds=3)
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

            bad = httpx.put(gw.base_url + "/admin/api/policies/checked", content=CHECKED.replace("verifier}", "magic}"),
                            headers={"content-type": "application/yaml"})
            assert bad.status_code == 422 and "score" in bad.json()["error"]["message"]
