"""Bad input and upstream failures reach the client as OpenAI error JSON with the right status,
and the official SDK raises its matching exception class."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import dep, gateway_settings, settings
from tests.support.harness import GatewayThread, running_gateway
from tests.support.net import free_port

MSG = [{"role": "user", "content": "hi"}]


def sdk(gw: GatewayThread, key: str = "sk-unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=20)


def _assert_error_shape(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json_is_400(gateway: GatewayThread) -> None:
    r = httpx.post(gateway.base_url + "/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    err = _assert_error_shape(r, 400)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG}, "model"),
        ({"model": "fake-model"}, "messages"),
        ({"model": "fake-model", "messages": []}, "messages"),
        ({"model": "fake-model", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "fake-model", "messages": MSG, "temperature": 7}, "temperature"),
        ({"model": "fake-model", "messages": MSG, "n": 0}, "n"),
        ({"model": "fake-model", "messages": MSG, "max_tokens": "many"}, "max_tokens"),
    ],
)
def test_invalid_fields_name_the_parameter(gateway: GatewayThread, body: dict, param: str) -> None:
    r = httpx.post(gateway.base_url + "/v1/chat/completions", json=body)
    err = _assert_error_shape(r, 400)
    assert err["param"] == param


def test_sdk_raises_bad_request_for_invalid_value(gateway: GatewayThread) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk(gateway).chat.completions.create(model="fake-model", messages=MSG, temperature=5)


def test_non_object_body_and_empty_body(gateway: GatewayThread) -> None:
    _assert_error_shape(httpx.post(gateway.base_url + "/v1/chat/completions", json=[1, 2]), 400)
    _assert_error_shape(httpx.post(gateway.base_url + "/v1/chat/completions", content=b""), 400)


def test_unknown_route_and_method_are_openai_shaped(gateway: GatewayThread) -> None:
    _assert_error_shape(httpx.get(gateway.base_url + "/v1/nothing"), 404)
    _assert_error_shape(httpx.get(gateway.base_url + "/v1/chat/completions"), 405)


@pytest.fixture()
def small_body_gateway(fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    s = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, max_body_bytes=2000)
    with running_gateway(s) as gw:
        yield gw


def test_body_over_limit_is_413(small_body_gateway: GatewayThread) -> None:
    big = [{"role": "user", "content": "x" * 5000}]
    r = httpx.post(small_body_gateway.base_url + "/v1/chat/completions", json={"model": "fake-model", "messages": big})
    _assert_error_shape(r, 413)
    # also without Content-Length (chunked upload)
    def gen() -> Iterator[bytes]:
        yield b'{"model":"fake-model","messages":[{"role":"user","content":"'
        yield b"y" * 5000
        yield b'"}]}'

    r = httpx.post(small_body_gateway.base_url + "/v1/chat/completions", content=gen())
    _assert_error_shape(r, 413)
    with pytest.raises(openai.APIStatusError) as ei:
        sdk(small_body_gateway).chat.completions.create(model="fake-model", messages=big)  # type: ignore[arg-type]
    assert ei.value.status_code == 413


@pytest.fixture()
def keyed_gateway(fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    s = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, require_keys=True)
    with running_gateway(s) as gw:
        yield gw


def test_keys_required_missing_bad_and_revoked_key_are_401(keyed_gateway: GatewayThread) -> None:
    gw = keyed_gateway
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, key="hg-not-a-real-key").chat.completions.create(model="fake-model", messages=MSG)
    r = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "fake-model", "messages": MSG})
    _assert_error_shape(r, 401)

    created = httpx.post(gw.base_url + "/admin/api/keys", json={"name": "ci"}).json()
    key = created["key"]
    assert sdk(gw, key=key).chat.completions.create(model="fake-model", messages=MSG).choices
    listed = httpx.get(gw.base_url + "/admin/api/keys").json()["data"]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert httpx.delete(gw.base_url + f"/admin/api/keys/{created['id']}").json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, key=key).chat.completions.create(model="fake-model", messages=MSG)


def test_key_allowed_models_is_enforced(keyed_gateway: GatewayThread) -> None:
    gw = keyed_gateway
    key = httpx.post(gw.base_url + "/admin/api/keys", json={"name": "narrow", "allowed_models": ["other"]}).json()["key"]
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gw, key=key).chat.completions.create(model="fake-model", messages=MSG)


@pytest.fixture()
def fast_timeout_gateway(fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    s = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path)
    for d in s.deployments:
        d.timeout_s = 0.5
    with running_gateway(s) as gw:
        yield gw


def test_upstream_timeout_is_504_timeout(fast_timeout_gateway: GatewayThread) -> None:
    with pytest.raises(openai.InternalServerError) as ei:
        sdk(fast_timeout_gateway).chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "slow [[fault:hang]]"}])
    assert ei.value.status_code == 504
    assert ei.value.body["type"] == "timeout"  # type: ignore[index]


def test_upstream_429_is_429_with_retry_after(gateway: GatewayThread) -> None:
    with pytest.raises(openai.RateLimitError) as ei:
        sdk(gateway).chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "busy [[fault:429:1]]"}])
    assert ei.value.status_code == 429
    assert ei.value.response.headers.get("retry-after") == "1"


def test_retry_after_is_rounded_up_so_a_client_that_waits_it_is_never_early() -> None:
    """Retry-After has whole seconds: an upstream's 1.4 s (retry-after-ms), or a limiter's, becomes 2,
    not 1, and an exact number of seconds stays that number."""
    from backends.base import UpstreamError
    from gateway.errors import from_refusal, from_upstream
    from service.errors import Refused

    assert from_upstream(UpstreamError("rate_limit", "slow down", retry_after_s=1.4)).headers["retry-after"] == "2"
    assert from_upstream(UpstreamError("rate_limit", "slow down", retry_after_s=3.0)).headers["retry-after"] == "3"
    assert from_upstream(UpstreamError("rate_limit", "slow down", retry_after_s=0.2)).headers["retry-after"] == "1"
    assert from_refusal(Refused("rate_limit_exceeded", "x", retry_after_s=1.0)).headers["retry-after"] == "1"
    assert from_refusal(Refused("rate_limit_exceeded", "x", retry_after_s=29.2)).headers["retry-after"] == "30"


def test_upstream_500_is_502_internal_error(gateway: GatewayThread) -> None:
    with pytest.raises(openai.InternalServerError) as ei:
        sdk(gateway).chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "boom [[fault:500]]"}])
    assert ei.value.status_code == 502


def test_context_window_exceeded_is_400(gateway: GatewayThread) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        sdk(gateway).chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "long [[fault:context_length]]"}])
    assert ei.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


def _with_nested(body: dict, depth: int) -> bytes:
    """``body`` as JSON with a tool whose parameter schema nests ``depth`` objects, four levels below the
    body's top (written by hand: Python's and orjson's encoders stop short of the depths tested)."""
    import orjson

    nested = '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)
    tools = '[{"type":"function","function":{"name":"f","parameters":' + nested + "}}]"
    return orjson.dumps(body)[:-1] + b',"tools":' + tools.encode() + b"}"


def test_json_nested_deeper_than_the_limit_is_400_not_500(gateway: GatewayThread) -> None:
    """orjson reads 1,024 levels but writes 255; a body between the two used to fail when the request log
    wrote it back (a 500). Past `MAX_JSON_DEPTH` it is refused up front; a deep but allowed body is served."""
    from gateway.edge import MAX_JSON_DEPTH

    body = {"model": "fake-model", "messages": MSG, "max_tokens": 4}
    url, headers = gateway.base_url + "/v1/chat/completions", {"content-type": "application/json"}
    for depth in (MAX_JSON_DEPTH, 300, 1000):  # the body itself is one more level
        r = httpx.post(url, content=_with_nested(body, depth), headers=headers)
        err = _assert_error_shape(r, 400)
        assert "nested too deeply" in err["message"]
    ok = httpx.post(url, content=_with_nested(body, 100), headers=headers)
    assert ok.status_code == 200, ok.text


def test_a_request_no_deployment_of_the_policy_can_serve_is_400_naming_the_parameter(gateway: GatewayThread) -> None:
    """No deployment behind `auto` accepts images or a 100K-token prompt: that is the caller's request, not a
    passing outage, so it is a 400 that names the parameter (not a retryable 503)."""
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                          {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]
    r = httpx.post(gateway.base_url + "/v1/chat/completions", json={"model": "auto", "messages": image})
    err = _assert_error_shape(r, 400)
    assert err["param"] == "messages" and err["code"] == "unsupported_request" and "images" in err["message"]
    assert "retry-after" not in r.headers
    huge = [{"role": "user", "content": "word " * 100_000}]
    r = httpx.post(gateway.base_url + "/v1/chat/completions", json={"model": "auto", "messages": huge, "max_tokens": 5})
    err = _assert_error_shape(r, 400)
    # the prompt alone is over every window: the prompt is named, not the small output limit sent with it
    assert err["param"] == "messages" and "context window" in err["message"]
    with pytest.raises(openai.BadRequestError):
        sdk(gateway).chat.completions.create(model="auto", messages=image)  # type: ignore[arg-type]


def test_auto_serves_a_prompt_near_the_window_when_the_caller_sets_no_limit(gateway: GatewayThread) -> None:
    """`auto` keeps room for its `default_max_tokens` (256) only where it can: a prompt within that of the
    only window (fake-a's 4096) and no max_tokens is served, as the model named directly serves it. An
    output limit the caller did send is counted in full, and the refusal names the field it came in."""
    url = gateway.base_url + "/v1/chat/completions"
    near = [{"role": "user", "content": "word " * 3100}]  # ~3880 tokens by the gateway's estimate
    for model in ("fake-model", "auto"):
        r = httpx.post(url, json={"model": model, "messages": near})
        assert r.status_code == 200, (model, r.text)
    for field in ("max_tokens", "max_completion_tokens"):
        r = httpx.post(url, json={"model": "auto", "messages": near, field: 1000})
        err = _assert_error_shape(r, 400)
        assert err["param"] == field and err["code"] == "unsupported_request", err


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"temperature": "0.5"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"n": 2.0}, "n"),
        ({"logprobs": "yes"}, "logprobs"),
    ],
)
def test_numbers_and_flags_of_the_wrong_type_are_400s_not_coerced(
    gateway: GatewayThread, extra: dict, param: str
) -> None:
    """The forwarded body is the one sent, so a coerced "stream": "yes" used to open a stream."""
    r = httpx.post(gateway.base_url + "/v1/chat/completions", json={"model": "fake-model", "messages": MSG, **extra})
    err = _assert_error_shape(r, 400)
    assert err["param"] == param
    ok = httpx.post(gateway.base_url + "/v1/chat/completions",
                    json={"model": "fake-model", "messages": MSG, "temperature": 1, "max_tokens": 3})
    assert ok.status_code == 200  # an integer is a number


@pytest.mark.parametrize(
    ("path", "body", "param", "expected"),
    [
        ("/v1/completions", {"model": "fake-model", "prompt": 5},
         "prompt", "a string, an array of strings, an array of integers or an array of arrays of integers"),
        ("/v1/completions", {"model": "fake-model", "prompt": [[1, "a"]]},
         "prompt", "a string, an array of strings, an array of integers or an array of arrays of integers"),
        ("/v1/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": 5}]},
         "messages[0].content", "a string or an array of objects"),
        ("/v1/chat/completions", {"model": "fake-model", "messages": MSG, "stop": 5},
         "stop", "a string or an array of strings"),
    ],
)
def test_a_value_of_none_of_a_fields_types_says_which_types_it_takes(
    gateway: GatewayThread, path: str, body: dict, param: str, expected: str
) -> None:
    err = _assert_error_shape(httpx.post(gateway.base_url + path, json=body), 400)
    assert err["param"] == param and err["code"] == "invalid_type"
    assert err["message"] == f"Invalid type for '{param}': expected {expected}."


# What the HTTP client libraries say about a failed connection ("Cannot connect to host 127.0.0.1:9
# ssl:default [Connect call failed ('127.0.0.1', 9)]", "ClientPayloadError(...)", litellm's
# "litellm.InternalServerError: OpenAIException - Connection error.") must never reach the client.
_INTERNALS = re.compile(r"aiohttp|httpx|httpcore|litellm|ssl:default|Connect call failed|Errno|127\.0\.0\.1|"
                        r"\b[A-Z][A-Za-z]*(Error|Exception)\b")


def _attempt_errors(gw: GatewayThread, db: Path) -> list[str]:
    gw.call(gw.services.sink.flush())
    with sqlite3.connect(db) as conn:
        return [m for (m,) in conn.execute("SELECT error_message FROM attempts WHERE status = 'error'")]


@pytest.mark.parametrize("provider", ["openai_compatible", "litellm"])
def test_an_unreachable_upstream_is_named_in_plain_words_not_the_http_librarys(
    provider: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HG_TEST_CLOSED_KEY", "sk-unused")
    port = free_port()  # nothing listens there: connection refused
    closed = dep("closed", "m", f"http://127.0.0.1:{port}/v1", provider=provider, api_key_env="HG_TEST_CLOSED_KEY",
                 upstream_model="openai/m" if provider == "litellm" else "m")
    expected = "The model's provider could not be reached. Please retry. (upstream 'closed' unreachable: connection refused)"
    no_breaker = {"consecutive_failures": 0, "min_requests": 100}  # every request reaches the closed port
    with running_gateway(settings(tmp_path, sqlite_url, [closed], breaker=no_breaker)) as gw, \
            httpx.Client(base_url=gw.base_url, timeout=30) as c:
        chat = {"model": "m", "messages": MSG}
        messages = [_assert_error_shape(c.post("/v1/chat/completions", json=chat), 502)["message"],
                    _assert_error_shape(c.post("/v1/chat/completions", json={**chat, "stream": True}), 502)["message"]]
        assert messages == [expected, expected]
        anthropic = c.post("/v1/messages", json={**chat, "max_tokens": 5})
        assert anthropic.status_code == 502 and anthropic.json()["error"]["message"] == expected, anthropic.text
        # the request log keeps what the library said, for whoever looks into it
        logged = _attempt_errors(gw, Path(sqlite_url.removeprefix("sqlite+aiosqlite:///")))
    assert logged and all(
        (f"127.0.0.1:{port}" if provider == "openai_compatible" else "Connection error") in m for m in logged), logged
    for m in messages:
        assert not _INTERNALS.search(m), m


def test_a_stream_cut_by_the_upstream_is_reported_without_the_http_librarys_words(gateway: GatewayThread) -> None:
    body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi [[fault:cut:2]]"}]}
    with httpx.Client(timeout=30) as c, c.stream("POST", gateway.base_url + "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_stream_cut"
    assert error["message"].startswith("The model's answer was cut off. ("), error
    assert "after 2 chunk(s)" in error["message"] and not _INTERNALS.search(error["message"]), error


@pytest.mark.parametrize(
    ("kind", "says"),
    [("auth", "The gateway's credentials for the model's provider were refused (a gateway configuration problem, "
              "not your API key)."),
     ("rate_limit", "The model's provider is rate limiting requests. Please retry after a short wait."),
     ("overloaded", "The model is busy with other requests. Please retry after a short wait."),
     ("server_error", "The model's provider had an error while processing your request."),
     ("malformed", "The model's provider sent an answer that could not be read."),
     ("stream_cut", "The model's answer was cut off."),
     ("timeout", "The model did not answer in time. Please retry."),
     ("something_new", "The model's provider failed.")],
)
def test_a_failure_the_client_did_not_cause_is_told_in_the_gateways_words_only(kind: str, says: str) -> None:
    """What an upstream says about its own failure (a masked key, the organization a rate limit counts, a
    proxy's error page) is for the operator, in the request log: the client gets the gateway's fixed words."""
    from backends.base import UpstreamError
    from gateway.errors import from_upstream

    leaky = "Incorrect API key provided: sk-ab***yz. Rate limit reached for org-4f2a in organization <html>proxy"
    err = from_upstream(UpstreamError(kind, leaky, status=500, body={"error": {"message": leaky, "code": "org-4f2a",
                                                                              "param": "org"}}))
    assert (err.message, err.param) == (says, None)
    assert err.code != "org-4f2a"
    # a gateway-authored reason (transport failures, a cut stream) still says what happened
    cut = from_upstream(UpstreamError("stream_cut", leaky, reason="server disconnected after 3 chunk(s)"))
    assert cut.message == "The model's answer was cut off. (server disconnected after 3 chunk(s))"


@pytest.mark.parametrize("kind", ["bad_request", "context_window", "content_policy"])
def test_a_client_caused_failure_keeps_the_upstreams_message_param_and_code(kind: str) -> None:
    from backends.base import UpstreamError
    from gateway.errors import from_upstream

    says = "'temperature' must be at most 2 for this model."
    err = from_upstream(UpstreamError(kind, says, status=400,
                                      body={"error": {"message": says, "param": "temperature", "code": "too_hot"}}))
    assert (err.status, err.message, err.param, err.code) == (400, says, "temperature", "too_hot")


_UPSTREAM_WORDS = ("Incorrect API key provided", "proxy error", "sk-echo")


@pytest.mark.parametrize(
    ("model", "status", "says"),
    [("echo-401", 502, "The gateway's credentials for the model's provider were refused (a gateway configuration "
                       "problem, not your API key)."),
     ("echo-429", 429, "The model's provider is rate limiting requests. Please retry after a short wait."),
     ("echo-500", 502, "The model's provider had an error while processing your request."),
     ("echo-text500", 502, "The model's provider had an error while processing your request."),
     ("echo-200err", 502, "The model's provider had an error while processing your request.")],
)
def test_an_upstreams_own_report_of_its_failure_reaches_the_log_not_the_client(
    model: str, status: int, says: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream's words (here: the Authorization header it was sent, in its error message or a plain-text
    error page) are in the failed attempt's row; every wire format's client error has the gateway's words."""
    from tests.support.echo_upstream import KeyEchoUpstream

    monkeypatch.setenv("HG_TEST_ECHO_KEY", "sk-echo-0123456789")
    with KeyEchoUpstream() as up, running_gateway(settings(tmp_path, sqlite_url, [
            dep("echo", model, up.api_base, upstream_model=model, api_key_env="HG_TEST_ECHO_KEY")],
            breaker={"consecutive_failures": 0, "min_requests": 100})) as gw, \
            httpx.Client(base_url=gw.base_url, timeout=30) as c:
        chat = {"model": model, "messages": MSG}
        got = {"chat": c.post("/v1/chat/completions", json=chat),
               "messages": c.post("/v1/messages", json={**chat, "max_tokens": 5}),
               "responses": c.post("/v1/responses", json={"model": model, "input": "hi"})}
        logged = _attempt_errors(gw, Path(sqlite_url.removeprefix("sqlite+aiosqlite:///")))
    for wire, r in got.items():
        assert r.status_code == status, (wire, r.text)
        message = r.json()["error"]["message"]
        assert message == says, (wire, message)
    assert len(logged) >= 3 and all(any(w in m for w in _UPSTREAM_WORDS) for m in logged), logged
