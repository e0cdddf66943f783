"""A log database that accepts connections and never answers (a hung server, a proxy that swallows
packets: the nastier outage, where nothing fails and nothing answers) costs the gateway its bounds
(`database_connect_timeout_s`, `database_timeout_s`), never a hang: it starts degraded, feedback is
a prompt 503 to retry, and the background syncs skip a round."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.fake_provider import FakeProviderThread
from requestlog.migrate import upgrade
from tests.support.gateway import gateway_settings
from tests.support.harness import running_gateway
from tests.support.requestlog import ThreadedProxy

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture()
def proxy() -> Iterator[ThreadedProxy]:
    p = ThreadedProxy()
    try:
        yield p
    finally:
        p.frozen = False
        p.close()


def _settings(fp: FakeProviderThread, proxy: ThreadedProxy, pg_url: str, tmp_path: Path) -> object:
    return gateway_settings(fp.base_url, proxy.url(pg_url.rsplit("/", 1)[1]), tmp_path,
                            database_connect_timeout_s=1.0, database_timeout_s=1.0, policy_reload_s=0.2)


def test_a_gateway_whose_database_hangs_starts_degraded_within_its_connect_timeout(
        fresh_pg_url: str, tmp_path: Path, proxy: ThreadedProxy, caplog: pytest.LogCaptureFixture) -> None:
    """Startup asks the hung database once (the preflight, bounded by the connect timeout), says so in one
    warning, and serves plain models; loading policies does not wait out the driver's 60 s."""
    upgrade(fresh_pg_url)
    proxy.frozen = True
    with FakeProviderThread() as fp, caplog.at_level(logging.WARNING):
        started = time.monotonic()
        with running_gateway(_settings(fp, proxy, fresh_pg_url, tmp_path)) as gw:
            took = time.monotonic() - started
            r = httpx.post(gw.base_url + "/v1/chat/completions", json=CHAT, timeout=10)
            assert r.status_code == 200, r.text
            time.sleep(1.5)  # the background jobs try the database a few times meanwhile
    assert took < 8, took
    lines = [rec.getMessage() for rec in caplog.records]
    startup = [line for line in lines if "starting anyway" in line]
    assert len(startup) == 1 and "connection timeout expired" in startup[0], lines
    # every failure line says what failed, a timeout included (its own text is empty)
    assert not [line for line in lines if re.search(r"\(\)|: \)|: $", line)], lines


def test_feedback_and_bandit_sync_on_a_database_that_hangs_give_up_within_the_timeouts(
        fresh_pg_url: str, tmp_path: Path, proxy: ThreadedProxy) -> None:
    """A pooled connection to a database that stopped answering: feedback is the usual 503 to retry (not a
    request held until the client gives up), a bandit sync round ends (skipped), and both work again once
    the database answers."""
    upgrade(fresh_pg_url)
    with FakeProviderThread() as fp, running_gateway(_settings(fp, proxy, fresh_pg_url, tmp_path)) as gw, \
            httpx.Client(base_url=gw.base_url, timeout=15) as http:
        rid = http.post("/v1/chat/completions", json=CHAT).headers["x-request-id"]
        gw.call(gw.services.sink.flush())
        gw.call(gw.services.router.sync_bandits())  # the engine's pool now holds a connection
        proxy.frozen = True
        started = time.monotonic()
        r = http.post("/v1/feedback", json={"request_id": rid, "score": 1.0})
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
        assert r.headers["retry-after"] == "5"
        assert time.monotonic() - started < 6
        started = time.monotonic()
        gw.call(gw.services.router.sync_bandits(), timeout=10)  # skipped, not hung
        assert time.monotonic() - started < 6
        proxy.frozen = False
        r = http.post("/v1/feedback", json={"request_id": rid, "score": 1.0})
        assert r.status_code == 201, r.text


def test_a_key_that_is_not_cached_while_the_database_hangs_is_a_503_to_retry_in_the_callers_shape(
        fresh_pg_url: str, tmp_path: Path, proxy: ThreadedProxy) -> None:
    """With keys required, a key the gateway has not looked up yet cannot be checked while the database hangs:
    the key may be valid, so not a 401, and not a 500 either: a 503 `store_unavailable` with Retry-After, in
    OpenAI's shape on /v1/chat/completions and Anthropic's on /v1/messages (where the key may come as
    x-api-key); a key looked up before is still served from the cache."""
    upgrade(fresh_pg_url)
    with FakeProviderThread() as fp:
        settings = gateway_settings(fp.base_url, proxy.url(fresh_pg_url.rsplit("/", 1)[1]), tmp_path,
                                    database_connect_timeout_s=1.0, database_timeout_s=1.0, policy_reload_s=0.2,
                                    require_keys=True, admin_token="adm-secret")
        with running_gateway(settings) as gw, httpx.Client(base_url=gw.base_url, timeout=15) as http:
            admin = {"authorization": "Bearer adm-secret"}
            used, fresh = (http.post("/admin/api/keys", json={"name": n}, headers=admin).json()["key"]
                           for n in ("used", "fresh"))
            assert http.post("/v1/chat/completions", json=CHAT,
                             headers={"authorization": f"Bearer {used}"}).status_code == 200
            proxy.frozen = True
            # first, well inside the key cache's 5 s: cached, so the hung database is not asked
            r = http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {used}"})
            assert r.status_code == 200, r.text
            started = time.monotonic()
            r = http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {fresh}"})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable" and r.headers["retry-after"] == "5", r.text
            assert time.monotonic() - started < 6
            r = http.post("/v1/messages", headers={"x-api-key": fresh, "anthropic-version": "2023-06-01"},
                          json={"model": "fake-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
            body = r.json()
            assert body["type"] == "error" and "unavailable, retry later" in body["error"]["message"], body
            proxy.frozen = False
            r = http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {fresh}"})
            assert r.status_code == 200, r.text


def test_a_key_sent_to_a_keyless_gateway_from_a_foreign_host_while_the_database_is_down_is_a_503_in_the_callers_shape(
        tmp_path: Path) -> None:
    """Where keys are not required, a request by a name outside `allowed_hosts` passes only with a valid key;
    a database that refuses connections cannot tell, so it is the same 503 to retry, in Anthropic's shape
    on /v1/messages."""
    from tests.support.net import free_port

    down = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/db"
    with FakeProviderThread() as fp, running_gateway(gateway_settings(
            fp.base_url, down, tmp_path, database_connect_timeout_s=1.0, database_timeout_s=1.0)) as gw:
        headers = {"x-api-key": "sk-anything", "anthropic-version": "2023-06-01", "host": "rebound.example"}
        r = httpx.post(gw.base_url + "/v1/messages", headers=headers, timeout=15,
                       json={"model": "fake-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        assert r.json()["type"] == "error" and "unavailable, retry later" in r.json()["error"]["message"], r.text
        r = httpx.post(gw.base_url + "/v1/chat/completions", json=CHAT, timeout=15,
                       headers={"authorization": "Bearer sk-anything", "host": "rebound.example"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text


def test_a_pool_with_no_free_connection_is_a_503_to_retry_in_the_callers_shape(
        fresh_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests waiting on a database that hangs can hold every pooled connection; the next one waits out the
    pool's timeout and gets SQLAlchemy's pool TimeoutError, no driver error. Feedback, an uncached key's lookup
    (OpenAI's shape, and Anthropic's on /v1/messages) and a budget change are the same 503 to retry as for a
    database that is down, a bandit sync round is skipped, and all of it works again once a connection is free."""
    import functools

    from sqlalchemy.ext.asyncio import create_async_engine

    import gateway.app

    upgrade(fresh_pg_url)
    # the gateway's own engine, with a pool of one connection that a caller waits at most 1 s for
    monkeypatch.setattr(gateway.app, "create_async_engine", functools.partial(
        create_async_engine, pool_size=1, max_overflow=0, pool_timeout=1.0))
    admin = {"authorization": "Bearer adm-secret"}
    with FakeProviderThread() as fp:
        settings = gateway_settings(fp.base_url, fresh_pg_url, tmp_path, policy_reload_s=0.2,
                                    require_keys=True, admin_token="adm-secret")
        with running_gateway(settings) as gw, httpx.Client(base_url=gw.base_url, timeout=15) as http:
            used, fresh = (http.post("/admin/api/keys", json={"name": n}, headers=admin).json()["key"]
                           for n in ("used", "fresh"))
            rid = http.post("/v1/chat/completions", json=CHAT,
                            headers={"authorization": f"Bearer {used}"}).headers["x-request-id"]
            gw.call(gw.services.sink.flush())
            held = gw.call(gw.services.engine.connect().start())  # the pool's only connection
            try:
                r = http.post("/v1/feedback", json={"request_id": rid, "score": 1.0}, headers=admin)
                assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
                assert r.headers["retry-after"] == "5"
                r = http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {fresh}"})
                assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
                r = http.post("/v1/messages", headers={"x-api-key": fresh, "anthropic-version": "2023-06-01"},
                              json={"model": "fake-model", "max_tokens": 5,
                                    "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
                assert r.json()["type"] == "error" and "unavailable, retry later" in r.json()["error"]["message"]
                r = http.put("/admin/api/budgets/team:research", json={"limit_usd": 5}, headers=admin)
                assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
                gw.call(gw.services.router.sync_bandits())  # skipped, not raised
            finally:
                gw.call(held.close())
            r = http.post("/v1/feedback", json={"request_id": rid, "score": 1.0}, headers=admin)
            assert r.status_code == 201, r.text
            r = http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {fresh}"})
            assert r.status_code == 200, r.text
