"""A key revoked through one gateway process is refused by every other one within 100 ms (Redis)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from backends.fake_provider import FakeProviderThread
from requestlog.migrate import upgrade
from tests.support.gateway import gateway_settings
from tests.support.harness import running_gateway

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_key_revoked_in_one_gateway_is_refused_by_the_other_within_100ms(
    fake_provider: FakeProviderThread, fresh_pg_url: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    upgrade(fresh_pg_url)
    shared = {
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "redis_timeout_s": 5.0,
        "redis_connect_timeout_s": 10.0,
        "require_keys": True,
        "admin_token": "adm-secret",
    }
    s1 = gateway_settings(fake_provider.base_url, fresh_pg_url, tmp_path / "g1", **shared)
    s2 = gateway_settings(fake_provider.base_url, fresh_pg_url, tmp_path / "g2", **shared)
    admin = {"authorization": "Bearer adm-secret"}
    with running_gateway(s1) as g1, running_gateway(s2) as g2, httpx.Client(timeout=10) as client:
        deadline = time.monotonic() + 10
        while not (g1.services.key_events.live and g2.services.key_events.live):
            assert time.monotonic() < deadline, "key change subscriptions did not come up"
            time.sleep(0.01)
        created = client.post(f"{g1.base_url}/admin/api/keys", json={"name": "k"}, headers=admin).json()
        auth = {"authorization": f"Bearer {created['key']}"}
        for gw in (g1, g2):  # both processes now hold the key in their cache (5 s TTL)
            assert (
                client.post(f"{gw.base_url}/v1/chat/completions", json=BODY, headers=auth).status_code == 200
            )

        r = client.delete(f"{g1.base_url}/admin/api/keys/{created['id']}", headers=admin)
        assert r.status_code == 200, r.text
        t0 = time.monotonic()
        while client.post(f"{g2.base_url}/v1/chat/completions", json=BODY, headers=auth).status_code != 401:
            assert time.monotonic() - t0 < 0.1, "the other gateway still serves the revoked key after 100 ms"
        for gw in (g1, g2):
            r = client.post(f"{gw.base_url}/v1/chat/completions", json=BODY, headers=auth)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
