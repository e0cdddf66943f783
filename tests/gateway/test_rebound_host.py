"""A web page whose DNS name is rebound to 127.0.0.1 reaches a gateway that needs no keys from a loopback
peer, as its own origin, and reads the answers (spending the operator's provider credit). Its requests
carry its own name in Host: a caller on this machine that names the gateway by anything but a loopback
name or one of `allowed_hosts`, and sends no valid key, is refused on the data plane and the observer
routes, in the error shape of the route's API. A browser's cross-site request, which could spend without
reading, is refused on the data plane too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from backends.fake_provider import FakeProviderThread
from gateway.config import load_settings
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayThread, running_gateway

METRICS = "metrics-token-for-host-tests-3f9a"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _rebound(gw: GatewayThread, site: str = "evil.example") -> dict[str, str]:
    """What a browser sends for a page of ``site`` whose DNS name now points at 127.0.0.1."""
    return {"host": f"{site}:{gw.port}", "origin": f"http://{site}:{gw.port}", "sec-fetch-site": "same-origin"}


def _chat_calls(fp: FakeProviderThread) -> int:
    return sum(1 for r in fp.requests() if r.path.endswith("/chat/completions"))


def _refused(r: httpx.Response) -> dict:
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["type"] == "permission_error" and err["code"] == "host_not_allowed", err
    assert "'evil.example'" in err["message"] and "allowed_hosts" in err["message"], err
    return err


def test_a_rebound_page_gets_nothing_from_the_data_plane_of_a_keyless_gateway(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    assert not gateway.settings.keys_required
    evil = _rebound(gateway)
    with httpx.Client(base_url=gateway.base_url, timeout=30) as c:
        err = _refused(c.post("/v1/chat/completions", headers=evil, json=CHAT))
        assert "gateway API key" in err["message"]
        _refused(c.post("/v1/chat/completions", headers=evil, json={**CHAT, "stream": True}))
        _refused(c.post("/v1/responses", headers=evil, json={"model": "fake-model", "input": "hi"}))
        _refused(c.post("/v1/completions", headers=evil, json={"model": "fake-model", "prompt": "hi"}))
        _refused(c.post("/v1/embeddings", headers=evil, json={"model": "fake-embed", "input": "hi"}))
        _refused(c.get("/v1/models", headers=evil))
        _refused(c.get("/v1/models/fake-model", headers=evil))
        _refused(c.post("/v1/feedback", headers=evil, json={"request_id": "x", "score": 1}))
        _refused(c.get("/v1/responses/resp_x", headers=evil))
        _refused(c.post("/v1/chat/completions", headers={**evil, "authorization": "Bearer hg-not-a-key"}, json=CHAT))
        for path, body in (("/v1/messages", CHAT), ("/v1/messages/count_tokens", CHAT)):
            r = c.post(path, headers=evil, json=body)
            assert r.status_code == 403 and r.json()["type"] == "error", r.text  # Anthropic's shape
            assert r.json()["error"]["type"] == "permission_error" and "allowed_hosts" in r.json()["error"]["message"]
        assert _chat_calls(fake_provider) == 0  # nothing was spent
        # the names a caller on this machine legitimately uses
        for host in (f"127.0.0.1:{gateway.port}", f"localhost:{gateway.port}", "LOCALHOST", "gw.localhost",
                     "127.0.0.2", "[::1]:80"):
            r = c.post("/v1/chat/completions", headers={"host": host}, json=CHAT)
            assert r.status_code == 200, (host, r.text)
        assert c.get("/healthz", headers=evil).status_code == 200  # says nothing, costs nothing


def test_a_valid_key_is_served_whatever_name_it_uses(gateway: GatewayThread) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=30) as c:
        key = c.post("/admin/api/keys", json={"name": "proxy"}).json()["key"]
        evil = _rebound(gateway)
        assert c.post("/v1/chat/completions", headers={**evil, "authorization": f"Bearer {key}"},
                      json=CHAT).status_code == 200
        assert c.post("/v1/messages", headers={**evil, "x-api-key": key}, json=CHAT).status_code == 200


def test_the_admin_token_is_served_whatever_name_it_uses(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    """The admin token is a credential a page does not have, as a key is: on a keyless gateway it judges any
    request on /v1/feedback under whatever name its caller (a script behind a proxy, say) uses; a wrong
    token is no credential."""
    s = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, admin_token="adm-secret")
    with running_gateway(s) as gw, httpx.Client(base_url=gw.base_url, timeout=30) as c:
        rid = c.post("/v1/chat/completions", json=CHAT).headers["x-request-id"]
        evil = _rebound(gw)
        judge = {"request_id": rid, "score": 1.0}
        _refused(c.post("/v1/feedback", headers=evil, json=judge))
        _refused(c.post("/v1/feedback", headers={**evil, "authorization": "Bearer adm-wrong"}, json=judge))
        r = c.post("/v1/feedback", headers={**evil, "authorization": "Bearer adm-secret"}, json=judge)
        assert r.status_code == 201 and r.json()["status"] == "recorded", r.text


def test_a_cross_site_page_cannot_spend_through_a_keyless_gateway_it_cannot_read(
    gateway: GatewayThread, fake_provider: FakeProviderThread
) -> None:
    """A page on another site may post a "simple" (text/plain, no-cors) request to http://127.0.0.1: it
    never reads the answer, but the provider's credit would be spent. A program sends no Origin."""
    page = {"origin": "https://evil.example", "sec-fetch-site": "cross-site", "content-type": "text/plain"}
    body = httpx.Request("POST", "/", json=CHAT).content
    with httpx.Client(base_url=gateway.base_url, timeout=30) as c:
        for headers in (page, {"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}, {"origin": "null"}):
            r = c.post("/v1/chat/completions", headers=headers, content=body)
            assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site", (headers, r.text)
        r = c.post("/v1/messages", headers=page, content=body)
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
        assert _chat_calls(fake_provider) == 0
        key = c.post("/admin/api/keys", json={"name": "web"}).json()["key"]
        assert c.post("/v1/chat/completions", headers={**page, "authorization": f"Bearer {key}"},
                      content=body).status_code == 200
        assert c.post("/v1/chat/completions", content=body).status_code == 200


@pytest.fixture()
def named_gateway(fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    """A keyless gateway that a local reverse proxy serves as gw.internal."""
    s = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, allowed_hosts=["GW.internal"])
    with running_gateway(s) as gw:
        yield gw


def test_allowed_hosts_names_the_hosts_a_local_proxy_or_hosts_file_uses(named_gateway: GatewayThread) -> None:
    gw = named_gateway
    with httpx.Client(base_url=gw.base_url, timeout=30) as c:
        for host in ("gw.internal", f"GW.Internal:{gw.port}"):
            assert c.post("/v1/chat/completions", headers={"host": host}, json=CHAT).status_code == 200, host
            assert c.get("/metrics", headers={"host": host}).status_code == 200, host
        _refused(c.post("/v1/chat/completions", headers=_rebound(gw), json=CHAT))
        _refused(c.get("/v1/models", headers=_rebound(gw, "evil.example")))
        assert c.post("/v1/chat/completions", headers={"host": "gw.internal.evil.example"},
                      json=CHAT).status_code == 403


@pytest.mark.parametrize("require_keys", [False, True])
def test_the_observer_routes_refuse_a_rebound_page_unless_it_has_the_metrics_token(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path, require_keys: bool
) -> None:
    """Keyless, or with keys and no metrics token (loopback callers only), /metrics and /readyz answered
    any caller on this machine, a rebound page included; the metrics token still opens them."""
    s = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, require_keys=require_keys)
    with running_gateway(s) as gw, httpx.Client(base_url=gw.base_url, timeout=30) as c:
        for path in ("/metrics", "/readyz"):
            err = _refused(c.get(path, headers=_rebound(gw)))
            assert "metrics_token" in err["message"]
            assert c.get(path).status_code == 200, path
    s = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, require_keys=require_keys,
                         metrics_token=METRICS)
    with running_gateway(s) as gw, httpx.Client(base_url=gw.base_url, timeout=30) as c:
        token = {"authorization": f"Bearer {METRICS}"}
        assert c.get("/metrics", headers={**_rebound(gw), **token}).status_code == 200
        assert c.get("/metrics", headers=_rebound(gw)).status_code == (401 if require_keys else 403)


def _request(peer: str, host: str | None) -> Request:
    headers = [(b"host", host.encode())] if host is not None else []
    return Request({"type": "http", "method": "GET", "path": "/v1/models", "headers": headers,
                    "client": (peer, 50000), "query_string": b""})


def test_only_callers_on_this_machine_are_held_to_a_loopback_name() -> None:
    """A peer on another machine never reaches a loopback-bound gateway through a rebound name (and one
    bound elsewhere without keys chose to serve any caller); a request without Host comes from no browser."""
    from gateway.edge import host_allowed

    assert host_allowed(_request("10.1.2.3", "evil.example"), ())
    assert not host_allowed(_request("127.0.0.1", "evil.example"), ())
    assert not host_allowed(_request("::1", "evil.example"), ())
    assert not host_allowed(_request("127.0.0.1", "evil.example:[x"), ())  # no host[:port] at all
    assert host_allowed(_request("127.0.0.1", None), ())
    assert host_allowed(_request("127.0.0.1", "evil.example"), ("*",))


@pytest.mark.parametrize("bad", ["http://gw.internal", "gw.internal:8080", "gw.internal/v1", "*.internal", ""])
def test_an_allowed_host_that_could_never_match_is_refused_at_load(bad: str) -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"allowed_hosts: entry 1 .* is not a host name or IP address"):
        load_settings(allowed_hosts=["ok.internal", bad])
    assert load_settings(allowed_hosts=["GW.Internal", "[::1]", "10.0.0.7", "*"]).allowed_hosts == \
        ["gw.internal", "::1", "10.0.0.7", "*"]
