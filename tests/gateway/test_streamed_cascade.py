"""Cascades on streamed requests, through the official SDK: the cheap model's answer is held back,
judged (token log-probabilities, or a trained answer verifier), then streamed on or replaced by the
stronger model's streamed answer; the client sees one answer, never two."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from backends.fake_provider import FakeProviderConfig, FakeProviderThread
from router.offline.artifacts import save_verifier
from router.offline.verifier_train import read_answers, train_verifier
from tests.support.gateway import dep, settings
from tests.support.harness import running_gateway
from tests.support.verifier_data import WEAK, arithmetic_problems, write_routellm

POLICY = """
name: checked
selector: {type: fixed, order: [cheap]}
escalation: {first: [cheap], to: [strong], threshold: 0.5, score: SCORE, stream_buffer_chars: BUFFER}
"""
QUESTION = [{"role": "user", "content": "Ann has 10 shells and finds 20 more. How many does she have now?"}]
RIGHT = "Step 1: 10 + 20 = 30.\nThe answer is 30."
WRONG = "Step 1: 10 + 20 = 35.\nThe answer is 35."
STRONG = "She has 30 shells."
CAPS = ["chat", "completion", "logprobs"]


@pytest.fixture(scope="module")
def verifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("verifier")
    verifier = train_verifier(read_answers([write_routellm(tmp / "toy.csv", arithmetic_problems(200))], WEAK), folds=3)
    save_verifier(verifier, tmp / "verifier")
    return tmp / "verifier"


@pytest.mark.parametrize(
    ("score", "cheap_answer", "buffer", "expect"),
    [
        ("logprobs", WRONG, 2000, "strong-model"),
        ("logprobs", RIGHT, 2000, "cheap-model"),
        (
            "logprobs",
            RIGHT,
            8,
            "cheap-model",
        ),  # longer than the buffer: its beginning is judged, the rest streams
        ("verifier", WRONG, 2000, "strong-model"),
        ("verifier", RIGHT, 2000, "cheap-model"),
    ],
)
def test_streamed_cascade_escalates_a_wrong_cheap_answer_and_keeps_a_right_one(
    tmp_path: Path,
    sqlite_url: str,
    verifier_dir: Path,
    score: str,
    cheap_answer: str,
    buffer: int,
    expect: str,
) -> None:
    # The fake model is unsure (p ≈ 0.34 per token) of the wrong answer and sure (p ≈ 0.93) of the right one.
    cheap_cfg = FakeProviderConfig(
        reply_mode="fixed", reply_text=cheap_answer, logprob_shift=-1.0 if cheap_answer == WRONG else 0.0
    )
    strong_cfg = FakeProviderConfig(reply_mode="fixed", reply_text=STRONG)
    with FakeProviderThread(config=cheap_cfg) as cheap, FakeProviderThread(config=strong_cfg) as strong:
        deployments = [
            dep("cheap", "cheap-model", cheap.base_url, capabilities=CAPS),
            dep("strong", "strong-model", strong.base_url, capabilities=CAPS),
        ]
        cfg = settings(
            tmp_path, sqlite_url, deployments, router={"verifiers": {"default": str(verifier_dir)}}
        )
        with running_gateway(cfg) as gw:
            spec = POLICY.replace("SCORE", score).replace("BUFFER", str(buffer))
            assert (
                httpx.put(
                    gw.base_url + "/admin/api/policies/checked",
                    content=spec,
                    headers={"content-type": "application/yaml"},
                ).status_code
                == 201
            )
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="checked", messages=QUESTION, stream=True, stream_options={"include_usage": True}
            )
            reason = raw.headers["x-hybridgate-route-reason"]
            chunks = list(raw.parse())

            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == (STRONG if expect == "strong-model" else cheap_answer)
            assert {c.model for c in chunks} == {expect} and raw.headers["x-hybridgate-model"] == expect
            assert f"{score}=" in reason and ("escalated" in reason) == (expect == "strong-model"), reason
            assert all(c.choices[0].logprobs is None for c in chunks if c.choices)  # the client did not ask
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
            assert (
                len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
            )  # streamed, not one blob
            assert strong.stats["total"] == (1 if expect == "strong-model" else 0)
            assert cheap.provider is not None
            assert ("logprobs" in cheap.provider.requests[-1].body) == (score == "logprobs")
            outcome = "escalated" if expect == "strong-model" else "kept"
            metrics = httpx.get(gw.base_url + "/metrics").text
            assert (
                f'hybridgate_escalations_total{{outcome="{outcome}",policy="checked",score="{score}"}} 1.0'
                in metrics
            )


def test_a_cheap_answer_that_breaks_off_while_held_is_escalated_unseen(
    tmp_path: Path, sqlite_url: str
) -> None:
    cheap_cfg = FakeProviderConfig(reply_mode="fixed", reply_text=RIGHT)
    strong_cfg = FakeProviderConfig(reply_mode="fixed", reply_text=STRONG)
    with FakeProviderThread(config=cheap_cfg) as cheap, FakeProviderThread(config=strong_cfg) as strong:
        cheap.set_faults("cut:3")  # three chunks, then the connection drops
        deployments = [
            dep("cheap", "cheap-model", cheap.base_url, capabilities=CAPS),
            dep("strong", "strong-model", strong.base_url, capabilities=CAPS),
        ]
        with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
            spec = POLICY.replace("SCORE", "logprobs").replace("BUFFER", "2000")
            assert (
                httpx.put(
                    gw.base_url + "/admin/api/policies/checked",
                    content=spec,
                    headers={"content-type": "application/yaml"},
                ).status_code
                == 201
            )
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="checked", messages=QUESTION, stream=True
            )
            chunks = list(raw.parse())
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == STRONG
            assert {c.model for c in chunks} == {"strong-model"}
            assert "first answer cut" in raw.headers["x-hybridgate-route-reason"]
