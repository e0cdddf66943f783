"""Policy hot reload between real gateway processes sharing Postgres and Redis."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from backends.fake_provider import FakeProviderThread
from requestlog.migrate import upgrade
from tests.support.gateway import gateway_settings
from tests.support.harness import running_gateway
from tests.support.wait import wait_until

POLICY = "name: fast-lane\ndescription: {desc}\nselector: {{type: cheapest}}\n"


def test_policy_changed_through_one_gateway_is_live_in_another_within_2s_while_polling_every_30s(
    fake_provider: FakeProviderThread, fresh_pg_url: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    upgrade(fresh_pg_url)
    shared = {
        "redis_url": redis_url,
        "redis_prefix": redis_prefix,
        "redis_timeout_s": 5.0,
        "redis_connect_timeout_s": 10.0,
        "policy_reload_s": 30.0,
    }
    s1 = gateway_settings(fake_provider.base_url, fresh_pg_url, tmp_path / "g1", **shared)
    s2 = gateway_settings(fake_provider.base_url, fresh_pg_url, tmp_path / "g2", **shared)
    with running_gateway(s1) as g1, running_gateway(s2) as g2:
        registry2 = g2.services.router.registry
        wait_until(lambda: g1.services.policy_events.live and g2.services.policy_events.live, 10, what="policy subscriptions did not come up")
        for version, desc in [(1, "first"), (2, "second")]:
            r = httpx.put(
                f"{g1.base_url}/admin/api/policies/fast-lane",
                content=POLICY.format(desc=desc),
                headers={"content-type": "application/yaml"},
            )
            assert r.status_code == 201 and r.json()["version"] == version, r.text
            t0 = time.monotonic()
            while registry2.active_version("fast-lane") != version:
                assert time.monotonic() - t0 < 2.0, f"v{version} not live in the other gateway within 2 s"
                time.sleep(0.005)
            assert registry2.active("fast-lane").description == desc
        r = httpx.post(f"{g1.base_url}/admin/api/policies/fast-lane/activate", json={"version": 1})
        assert r.status_code == 200, r.text
        t0 = time.monotonic()
        while registry2.active_version("fast-lane") != 1:
            assert time.monotonic() - t0 < 2.0, "rollback not live in the other gateway within 2 s"
            time.sleep(0.005)
        # the other gateway offers the policy it learned of
        listed = httpx.get(f"{g2.base_url}/v1/models").json()["data"]
        assert "fast-lane" in {m["id"] for m in listed}
