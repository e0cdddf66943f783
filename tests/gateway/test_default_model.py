"""`default_model`: a request for the model `default` is served by the configured model or policy."""

from __future__ import annotations

from pathlib import Path

import httpx

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import gateway_settings
from tests.support.harness import running_gateway

MSG = [{"role": "user", "content": "hello"}]


def test_the_default_alias_is_served_by_the_configured_default_model(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    s = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, default_model="fake-model")
    with running_gateway(s) as gw:
        r = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "default", "messages": MSG}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["x-hybridgate-deployment"] == "fake-a"
        m = httpx.post(gw.base_url + "/v1/messages", timeout=30,
                       json={"model": "default", "max_tokens": 5, "messages": MSG})
        assert m.status_code == 200 and m.json()["type"] == "message", m.text


def test_without_a_default_model_the_alias_is_an_unknown_model(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path)) as gw:
        r = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "default", "messages": MSG}, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
