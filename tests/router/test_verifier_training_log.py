"""A verifier trained from the request log (`router train-verifier --from-db`) learns from the pairs a cascade
judges: a legacy completion's answer without the prompt it echoes (whole or streamed; a token-id prompt placed by
its logprobs), judged against the prompt its first choice answers (the first of several), and a request that
generated nothing left out. Through the real gateway and fake providers, with a recording verifier in the
cascade's verifier slot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from backends.fake_provider import FakeProviderConfig, FakeProviderThread
from router.escalation import Echo
from router.offline.feedback_db import logged_answer_text, read_answer_feedback
from tests.support.db import migrated_sqlite_url
from tests.support.gateway import dep, settings
from tests.support.harness import running_gateway

PROMPT = "Check: 2 + 2 = 5. Ann has 10 shells and finds 20 more. How many?"
CHEAP = " 10 + 20 = 30. The answer is 30."
CAPS = ["chat", "completion", "logprobs"]
CHECKED = """
name: checked
selector: {type: fixed, order: [cheap]}
escalation: {first: [cheap], to: [strong], threshold: 0.5, score: "verifier:rec"}
"""


class Recorder:
    """A verifier that keeps every answer (what the cascade judged) and trusts it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def p_ok(self, prompt: str, answer: str) -> float:
        self.seen.append((prompt, answer))
        return 1.0


def test_training_reads_the_prompt_and_answer_the_cascade_judged(tmp_path: Path, sqlite_template: Path) -> None:
    url = migrated_sqlite_url(sqlite_template, tmp_path / "gw.db")
    asks: list[tuple[str, dict[str, Any]]] = [
        ("completions", {"prompt": PROMPT, "echo": True, "max_tokens": 20}),
        ("completions", {"prompt": PROMPT, "echo": True, "max_tokens": 20, "stream": True}),
        ("completions", {"prompt": ["Second one first?", PROMPT], "echo": True, "max_tokens": 20, "stream": True}),
        ("completions", {"prompt": ["Two prompts, no echo", "b"], "max_tokens": 20}),
        ("completions", {"prompt": [7, 8, 9], "echo": True, "logprobs": 1, "max_tokens": 20}),
        ("completions", {"prompt": [[7, 8], [9]], "echo": True, "logprobs": 1, "max_tokens": 20, "stream": True}),
        ("completions", {"prompt": PROMPT, "echo": True, "max_tokens": 0}),  # nothing generated: not judged
        ("chat/completions", {"messages": [{"role": "user", "content": PROMPT}]}),
    ]
    recorder = Recorder()
    with (
        FakeProviderThread(config=FakeProviderConfig(reply_mode="fixed", reply_text=CHEAP)) as cheap,
        FakeProviderThread() as strong,
    ):
        deployments = [dep("cheap", "cheap-model", cheap.base_url, capabilities=CAPS),
                       dep("strong", "strong-model", strong.base_url, capabilities=CAPS)]
        cfg = settings(tmp_path, url, deployments,
                       log={"bodies": "full", "spool_dir": str(tmp_path / "spool"), "batch_max_ms": 10})
        with running_gateway(cfg) as gw:
            gw.services.router.plugins.verifiers["rec"] = recorder
            r = httpx.put(gw.base_url + "/admin/api/policies/checked", content=CHECKED,
                          headers={"content-type": "application/yaml"})
            assert r.status_code == 201, r.text
            for path, body in asks:
                r = httpx.post(f"{gw.base_url}/v1/{path}", json={"model": "checked", **body}, timeout=30)
                assert r.status_code == 200 and r.headers["x-hybridgate-model"] == "cheap-model", r.text
                fb = httpx.post(gw.base_url + "/v1/feedback", json={"request_id": r.headers["x-request-id"],
                                                                    "score": 1.0})
                assert fb.status_code == 201, fb.text
            gw.call(gw.services.sink.flush())

    data = read_answer_feedback(url.replace("+aiosqlite", ""), "cheap-model")
    learned = sorted(zip(data.prompts, data.answers, strict=True))
    assert learned == sorted(recorder.seen)
    assert len(learned) == len(asks) - 1 and all(answer == CHEAP for _, answer in learned)
    # the first choice is judged against the first prompt; a token-id prompt has no text
    assert sorted(p for p, _ in learned) == sorted([PROMPT, PROMPT, "Second one first?", "Two prompts, no echo",
                                                    "", "", PROMPT])


def _sse(chunks: list[dict[str, Any]]) -> str:
    return "".join(f"data: {json.dumps({'choices': [c]})}\n\n" for c in chunks) + "data: [DONE]\n\n"


def test_a_logged_stream_is_read_choice_0_only_with_the_echo_cut_off() -> None:
    """Chunks of several choices interleave in a logged stream: only the first choice's text is the answer;
    an echoed token-id prompt is placed by its logprobs (streamed offsets absolute, or missing and counted)."""
    text = _sse([{"index": 0, "text": "Q? A"}, {"index": 1, "text": "other"}, {"index": 0, "text": "!"}])
    assert logged_answer_text(text) == "Q? A!" and logged_answer_text(text, Echo(text="Q?")) == " A!"
    ids = _sse([
        {"index": 0, "text": " t7 t8 yes", "logprobs": {"tokens": [" t7", " t8", " yes"],
                                                        "token_logprobs": [None, -2.0, -0.1]}},
        {"index": 0, "text": " sir", "logprobs": {"tokens": [" sir"], "token_logprobs": [-0.2], "text_offset": [10]}},
        {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"},
    ])
    assert logged_answer_text(ids, Echo(tokens=2)) == " yes sir"
    assert logged_answer_text(json.dumps({"choices": [{"text": " t7 t8 yes"}]}), Echo(tokens=2)) is None
