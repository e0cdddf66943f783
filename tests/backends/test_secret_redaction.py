"""A backend's errors never carry its provider key, even when the upstream echoes the key it was sent
(in a message, a code, a param, a plain-text error page, an error object in a 200, a stream's error
event), nor a password written into the deployment's ``api_base``: an error's message and body go to
the request log, the client's error and the console."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from backends.base import UpstreamCall, UpstreamError
from backends.litellm_backend import LiteLLMBackend
from backends.openai_compatible import OpenAICompatibleBackend
from common.types import DeploymentConfig
from tests.support.echo_upstream import MODELS, KeyEchoUpstream

KEY = "sk-echoed-provider-key-5f0c3a9e1b7d"
AZURE_SHAPED = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # no sk- prefix: only the literal key can catch it
URL_PASSWORD = "url-password-9d8c7b6a5f4e"


@pytest.fixture(scope="module")
def upstream() -> Iterator[KeyEchoUpstream]:
    with KeyEchoUpstream() as up:
        yield up


def _call(model: str) -> UpstreamCall:
    return UpstreamCall("chat", {"model": model, "messages": [{"role": "user", "content": "hi"}]}, 5.0)


async def _error(backend: Any, model: str, stream: bool) -> UpstreamError:
    try:
        if stream:
            async for _ in backend.stream(_call(model)):
                pass
        else:
            await backend.complete(_call(model))
    except UpstreamError as err:
        return err
    raise AssertionError(f"{model}: no error")


def _leaks(err: UpstreamError, secret: str) -> list[str]:
    seen = {"message": err.message, "str": str(err), "repr": repr(err), "reason": err.reason or "",
            "body": orjson.dumps(err.body, default=str).decode()}
    return [where for where, text in seen.items() if secret in text]


@pytest.mark.parametrize("key", [KEY, AZURE_SHAPED])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
async def test_openai_compatible_errors_never_carry_the_key(
    upstream: KeyEchoUpstream, model: str, stream: bool, key: str
) -> None:
    b = OpenAICompatibleBackend("echo", upstream.api_base, api_key=key)
    try:
        err = await _error(b, model, stream)
    finally:
        await b.aclose()
    assert _leaks(err, key) == [], (model, err.message)
    assert "[redacted]" in err.message or "[redacted]" in str(err.body), (model, err.message)


async def test_a_password_in_api_base_never_reaches_an_error() -> None:
    b = OpenAICompatibleBackend("refused", f"http://user:{URL_PASSWORD}@127.0.0.1:1/v1")
    try:
        err = await _error(b, "any", stream=False)
    finally:
        await b.aclose()
    assert err.kind == "connection" and _leaks(err, URL_PASSWORD) == [], err.message


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["echo-401", "echo-500", "echo-400"])
async def test_litellm_errors_never_carry_the_key(upstream: KeyEchoUpstream, model: str, stream: bool) -> None:
    cfg = DeploymentConfig(name="echo-ll", model=model, provider="litellm", upstream_model=f"openai/{model}",
                           api_base=upstream.api_base)
    err = await _error(LiteLLMBackend(cfg, api_key=KEY), model, stream)
    assert _leaks(err, KEY) == [], (model, err.message)
