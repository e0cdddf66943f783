"""A provider key that the upstream echoes back (in its error's message, code or param, a plain-text
error page, a stream's error event) reaches neither the client's error, in any wire format, nor the
request log's request and attempt rows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.echo_upstream import MODELS, KeyEchoUpstream
from tests.support.gateway import dep, settings
from tests.support.harness import GatewayThread, running_gateway
from tests.support.requestlog import fetch

KEY = "sk-echoed-provider-key-for-gateway-7c2e"
KEY_ENV = "HG_TEST_ECHOED_PROVIDER_KEY"


@pytest.fixture()
def gw(tmp_path: Path, sqlite_url: str) -> Iterator[GatewayThread]:
    os.environ[KEY_ENV] = KEY
    try:
        with KeyEchoUpstream() as up:
            deps = [dep(f"{m}-d", m, up.api_base, upstream_model=m, api_key_env=KEY_ENV) for m in MODELS]
            with running_gateway(settings(tmp_path, sqlite_url, deps)) as gw:
                yield gw
    finally:
        os.environ.pop(KEY_ENV, None)


def test_an_echoed_provider_key_reaches_no_client_error_and_no_log_row(gw: GatewayThread, sqlite_url: str) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    answers = []
    with httpx.Client(base_url=gw.base_url, timeout=30) as c:
        for model in MODELS:
            for path, body in (("/v1/chat/completions", {"model": model, "messages": msgs}),
                               ("/v1/chat/completions", {"model": model, "messages": msgs, "stream": True}),
                               ("/v1/messages", {"model": model, "max_tokens": 16, "messages": msgs}),
                               ("/v1/responses", {"model": model, "input": "hi"})):
                r = c.post(path, json=body)
                answers.append((model, path, r.status_code, r.text))
    assert all(status >= 400 or "error" in text for _, _, status, text in answers)
    assert [a for a in answers if KEY in a[3]] == []
    assert any("[redacted]" in a[3] for a in answers)  # the upstream's words are kept, less the key
    gw.call(gw.services.sink.flush())
    requests = gw.call(fetch(sqlite_url, "SELECT * FROM requests"))
    attempts = gw.call(fetch(sqlite_url, "SELECT * FROM attempts"))
    assert len(requests) == len(answers) and {a.deployment for a in attempts} == {f"{m}-d" for m in MODELS}
    assert [r for r in [*requests, *attempts] if KEY in repr(tuple(r))] == []
