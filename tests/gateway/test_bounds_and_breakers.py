"""Bad input never harms others: out-of-range parameters get a 400 naming the parameter before any
upstream call; client-caused upstream failures never open a breaker (5xx still do); errors are
OpenAI-shaped and written for the client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayThread, running_gateway

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
RESP = {"model": "fake-model", "input": "hi"}
MSG = {"model": "fake-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}

OUT_OF_RANGE: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/embeddings", {"model": "fake-model", "input": "x", "dimensions": 3612641028}, "dimensions"),
    ("/v1/embeddings", {"model": "fake-model", "input": "x", "dimensions": 0}, "dimensions"),
    ("/v1/embeddings", {"model": "fake-model", "input": ["x"] * 2049}, "input"),
    ("/v1/chat/completions", CHAT | {"n": 129}, "n"),
    ("/v1/chat/completions", CHAT | {"max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", CHAT | {"max_tokens": 10**12}, "max_tokens"),
    ("/v1/chat/completions", CHAT | {"max_completion_tokens": 10**12}, "max_completion_tokens"),
    ("/v1/chat/completions", CHAT | {"max_tokens": 5000}, "max_tokens"),  # more than fake-a's 4096 window
    ("/v1/chat/completions", CHAT | {"max_completion_tokens": 5000}, "max_completion_tokens"),
    ("/v1/completions", {"model": "fake-model", "prompt": "x", "max_tokens": 5000}, "max_tokens"),
    ("/v1/chat/completions", CHAT | {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", CHAT | {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ("/v1/chat/completions", CHAT | {"temperature": 2.5}, "temperature"),
    ("/v1/chat/completions", CHAT | {"seed": 2**64}, "seed"),
    ("/v1/chat/completions", CHAT | {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    (
        "/v1/chat/completions",
        {"model": "fake-model", "messages": [{"role": "user", "content": "x"}] * 2049},
        "messages",
    ),
    ("/v1/completions", {"model": "fake-model", "prompt": "x", "best_of": 21}, "best_of"),
    ("/v1/responses", RESP | {"max_output_tokens": 10**12}, "max_output_tokens"),
    ("/v1/responses", RESP | {"top_logprobs": 21}, "top_logprobs"),
    ("/v1/responses", RESP | {"temperature": -1}, "temperature"),
    ("/v1/responses", {"model": "fake-model", "input": [{"role": "user", "content": "x"}] * 2049}, "input"),
]


def test_out_of_range_values_get_a_400_naming_the_param_and_never_reach_the_upstream(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    before = len(fake_provider.requests())
    with httpx.Client(base_url=gateway.base_url, timeout=10) as http:
        for path, body, param in OUT_OF_RANGE:
            r = http.post(path, json=body)
            assert r.status_code == 400, (path, param, r.text)
            err = r.json()["error"]
            assert err["param"] == param and err["type"] == "invalid_request_error", (path, err)
        # Anthropic names its params too, in its own error shape.
        for body, param in [
            (MSG | {"max_tokens": 0}, "max_tokens"),
            (MSG | {"temperature": 1.5}, "temperature"),
        ]:
            r = http.post("/v1/messages", json=body)
            assert (
                r.status_code == 400 and r.json()["type"] == "error" and param in r.json()["error"]["message"]
            )
        # The fuzzing case that once hung an upstream, then a valid request: it succeeds.
        ok = http.post("/v1/embeddings", json={"model": "fake-model", "input": "x", "dimensions": 8})
        assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 8
    assert len(fake_provider.requests()) == before + 1


def _breaker(gw: GatewayThread) -> str:
    return gw.call(gw.services.router.breakers.states(["fake-a"]))["fake-a"]


def test_client_caused_upstream_failures_never_open_the_breaker_but_5xx_do(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    settings = gateway_settings(
        fake_provider.base_url,
        sqlite_url,
        tmp_path,
        breaker={"min_requests": 3, "consecutive_failures": 3, "window_s": 60},
    )
    with running_gateway(settings) as gw, httpx.Client(base_url=gw.base_url, timeout=10) as http:
        for _ in range(3):
            for fault, status in [
                ("error:400", 400),
                ("error:404", 404),
                ("error:413", 400),
                ("error:422", 400),
                ("context_length", 400),
                ("content_filter", 400),
            ]:
                r = http.post(
                    "/v1/chat/completions",
                    json=CHAT | {"messages": [{"role": "user", "content": f"[[fault:{fault}]] hi"}]},
                )
                assert r.status_code == status, (fault, r.text)
                assert not r.json()["error"]["message"].startswith("upstream ")
        assert _breaker(gw) == "closed"
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        for _ in range(4):
            r = http.post(
                "/v1/chat/completions",
                json=CHAT | {"messages": [{"role": "user", "content": "[[fault:500]] hi"}]},
            )
        # the 5xx opened the breaker: the last request reaches no upstream and is told to come back
        assert _breaker(gw) == "open"
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_candidates" and "retry-after" in r.headers


def test_errors_are_openai_shaped_and_written_for_the_client(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    chat_only = {
        "name": "fake-chat",
        "model": "chat-only",
        "upstream_model": "fake-model",
        "api_base": fake_provider.base_url,
        "capabilities": ["chat"],
    }
    base = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path)
    settings = base.model_copy(
        update={
            "deployments": [*base.deployments, type(base.deployments[0])(**chat_only)],
            "require_keys": True,
        }
    )
    with running_gateway(settings) as gw, httpx.Client(base_url=gw.base_url, timeout=10) as http:
        secret, _ = gw.call(gw.services.keys.create("limited", allowed_models=["chat-only", "fake-model"]))
        auth = {"authorization": f"Bearer {secret}"}
        r = http.get("/v1/no/such/path", headers=auth)
        assert r.status_code == 404 and r.headers["x-request-id"]
        assert set(r.json()["error"]) == {"message", "type", "param", "code"} and "/v1/no/such/path" in r.text
        r = http.post("/v1/embeddings", json={"model": "chat-only", "input": "x"}, headers=auth)
        assert (
            r.status_code == 400
            and r.json()["error"]["message"] == "The model `chat-only` does not support embeddings."
        )
        assert r.json()["error"]["param"] == "model"
        models = OpenAI(base_url=gw.base_url + "/v1", api_key=secret).models.list()
        assert sorted(m.id for m in models.data) == ["chat-only", "fake-model"]
        r = http.get("/v1/models/fake-embed", headers=auth)
        assert r.status_code == 404


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
def test_new_endpoints_answer_401_without_a_key_when_keys_are_required(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path, path: str
) -> None:
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, require_keys=True)
    with running_gateway(settings) as gw, httpx.Client(base_url=gw.base_url, timeout=10) as http:
        r = http.post(path, json=RESP if path == "/v1/responses" else MSG)
        assert r.status_code == 401
        secret, _ = gw.call(gw.services.keys.create("k"))
        headers = {"x-api-key": secret} if path == "/v1/messages" else {"authorization": f"Bearer {secret}"}
        assert (
            http.post(path, json=RESP if path == "/v1/responses" else MSG, headers=headers).status_code == 200
        )
