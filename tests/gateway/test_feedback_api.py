"""POST /v1/feedback answers with what is stored."""

from __future__ import annotations

import httpx

from tests.support.harness import GatewayThread

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_a_duplicate_judgement_answers_the_score_stored_not_the_one_sent(gateway: GatewayThread) -> None:
    """A second judgement from the same source changes nothing, so its answer reports the first one's score:
    `thumbs: up` (1.0) after `score: 0.8` is a duplicate of 0.8."""
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        rid = client.post("/v1/chat/completions", json=BODY).headers["x-request-id"]
        first = client.post("/v1/feedback", json={"request_id": rid, "score": 0.8})
        assert first.status_code == 201 and first.json()["score"] == 0.8, first.text
        again = client.post("/v1/feedback", json={"request_id": rid, "thumbs": "up"})
        assert again.status_code == 200, again.text
        assert again.json() == {"request_id": rid, "source": "user", "score": 0.8, "status": "duplicate"}
        other = client.post("/v1/feedback", json={"request_id": rid, "thumbs": "up", "source": "grader"})
        assert other.status_code == 201 and other.json()["score"] == 1.0, other.text
