"""Retiring a policy through the admin API of a running gateway: it stops routing (its name is an
unknown model) here and in another gateway process, leaves /v1/models, keeps its versions, comes back
with the next version on a PUT, and is not brought back by seeding at the next start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from backends.fake_provider import FakeProviderThread
from requestlog.migrate import upgrade
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayThread, running_gateway
from tests.support.wait import wait_until

POLICY = "name: fast-lane\ndescription: {desc}\nselector: {{type: cheapest}}\n"
YAML = {"content-type": "application/yaml"}
MSG = [{"role": "user", "content": "hello"}]


def _chat(base_url: str, model: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json={"model": model, "messages": MSG}, timeout=30)


def _models(base_url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{base_url}/v1/models").json()["data"]}


def _put(base_url: str, desc: str) -> dict[str, Any]:
    r = httpx.put(f"{base_url}/admin/api/policies/fast-lane", content=POLICY.format(desc=desc), headers=YAML)
    assert r.status_code == 201, r.text
    return r.json()


def _not_found_like_an_unknown_model(r: httpx.Response, base_url: str) -> None:
    unknown = _chat(base_url, "no-such-model-anywhere")
    assert (r.status_code, unknown.status_code) == (404, 404), r.text
    got, want = r.json()["error"], unknown.json()["error"]
    assert {k: got[k] for k in ("type", "code", "param")} == {k: want[k] for k in ("type", "code", "param")}
    assert got["code"] == "model_not_found" and "fast-lane" in got["message"]


def test_retire_stops_routing_keeps_versions_and_a_put_brings_it_back(gateway: GatewayThread) -> None:
    base = gateway.base_url
    _put(base, "first")
    _put(base, "second")
    assert _chat(base, "fast-lane").headers["x-hybridgate-policy"] == "fast-lane@2"
    assert "fast-lane" in _models(base)

    r = httpx.delete(f"{base}/admin/api/policies/fast-lane")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("name", "retired", "version", "retired_by", "versions")} == {
        "name": "fast-lane", "retired": True, "version": 2, "retired_by": "admin-api", "versions": 2}

    _not_found_like_an_unknown_model(_chat(base, "fast-lane"), base)
    assert "fast-lane" not in _models(base)
    assert httpx.get(f"{base}/v1/models/fast-lane").status_code == 404
    assert httpx.post(f"{base}/admin/api/policies/fast-lane/simulate", json={"messages": MSG}).status_code == 404

    # the history stays, with who retired it and when
    detail = httpx.get(f"{base}/admin/api/policies/fast-lane").json()
    assert detail["active_version"] is None and [v["version"] for v in detail["versions"]] == [1, 2]
    assert not any(v["active"] for v in detail["versions"])
    assert detail["retired"] == {"version": 2, "retired_at": body["retired_at"], "retired_by": "admin-api"}
    assert detail["retirements"] == [detail["retired"]]
    [listed] = [p for p in httpx.get(f"{base}/admin/api/policies").json()["data"] if p["name"] == "fast-lane"]
    assert listed["active_version"] is None and listed["retired"] == detail["retired"]

    again = httpx.delete(f"{base}/admin/api/policies/fast-lane")
    assert again.status_code == 404 and again.json()["error"]["code"] == "policy_not_found"
    assert "fast-lane" in again.json()["error"]["message"] and "retired" in again.json()["error"]["message"]
    rollback = httpx.post(f"{base}/admin/api/policies/fast-lane/activate", json={})
    assert rollback.status_code == 409 and rollback.json()["error"]["code"] == "policy_retired", rollback.text

    # a PUT of the same text routes again, as the next version
    back = _put(base, "second")
    assert (back["version"], back["active"]) == (3, True)
    assert _chat(base, "fast-lane").headers["x-hybridgate-policy"] == "fast-lane@3"
    assert "fast-lane" in _models(base)
    detail = httpx.get(f"{base}/admin/api/policies/fast-lane").json()
    assert detail["retired"] is None and len(detail["retirements"]) == 1


def test_retiring_an_unknown_policy_is_a_404_naming_it(gateway: GatewayThread) -> None:
    r = httpx.delete(f"{gateway.base_url}/admin/api/policies/never-stored")
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["code"] == "policy_not_found" and "never-stored" in err["message"]


def test_the_configured_default_model_policy_cannot_be_retired(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    seed = tmp_path / "policies"  # default_model must name a policy at start (serve's preflight)
    seed.mkdir()
    (seed / "fast-lane.yaml").write_text(POLICY.format(desc="first"))
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path,
                                          default_model="fast-lane", policies_dir=str(seed))) as gw:
        r = httpx.delete(f"{gw.base_url}/admin/api/policies/fast-lane")
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "policy_in_use" and "default_model" in err["message"] and "fast-lane" in err["message"]
        assert _chat(gw.base_url, "fast-lane").status_code == 200


def test_a_retired_seeded_policy_stays_retired_across_restarts_until_its_file_changes(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    seed = tmp_path / "policies"
    seed.mkdir()
    (seed / "fast-lane.yaml").write_text(POLICY.format(desc="seeded"))
    settings = gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, policies_dir=str(seed))
    with running_gateway(settings) as gw:
        for name in ("fast-lane", "auto"):  # ours, and the shipped default seeded at first start
            assert _chat(gw.base_url, name).status_code == 200, name
            assert httpx.delete(f"{gw.base_url}/admin/api/policies/{name}").status_code == 200
    with running_gateway(settings) as gw:  # restarted, files unchanged: both stay retired
        for name in ("fast-lane", "auto"):
            assert _chat(gw.base_url, name).status_code == 404, name
            assert name not in _models(gw.base_url)
        assert httpx.get(f"{gw.base_url}/admin/api/policies/fast-lane").json()["retired"]["version"] == 1
    (seed / "fast-lane.yaml").write_text(POLICY.format(desc="seeded, changed"))
    with running_gateway(settings) as gw:  # a changed file is a new version, live again
        r = _chat(gw.base_url, "fast-lane")
        assert r.status_code == 200 and r.headers["x-hybridgate-policy"] == "fast-lane@2"
        assert _chat(gw.base_url, "auto").status_code == 404


def test_a_policy_retired_through_one_gateway_stops_routing_in_another_within_2s(
    fake_provider: FakeProviderThread, fresh_pg_url: str, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    upgrade(fresh_pg_url)
    shared = {"redis_url": redis_url, "redis_prefix": redis_prefix, "redis_timeout_s": 5.0,
              "redis_connect_timeout_s": 10.0, "policy_reload_s": 30.0}  # only the push can carry it in time
    s1 = gateway_settings(fake_provider.base_url, fresh_pg_url, tmp_path / "g1", **shared)
    s2 = gateway_settings(fake_provider.base_url, fresh_pg_url, tmp_path / "g2", **shared)
    with running_gateway(s1) as g1, running_gateway(s2) as g2:
        registry2 = g2.services.router.registry
        wait_until(lambda: g1.services.policy_events.live and g2.services.policy_events.live, 10,
                   what="policy subscriptions did not come up")
        _put(g1.base_url, "first")
        wait_until(lambda: registry2.active_version("fast-lane") == 1, 2.0, what="v1 not live in the other gateway")
        assert _chat(g2.base_url, "fast-lane").status_code == 200

        assert httpx.delete(f"{g1.base_url}/admin/api/policies/fast-lane").status_code == 200
        t0 = time.monotonic()
        wait_until(lambda: registry2.active("fast-lane") is None, 2.0,
                   what="retirement not seen by the other gateway within 2 s", interval_s=0.005)
        assert time.monotonic() - t0 < 2.0
        _not_found_like_an_unknown_model(_chat(g2.base_url, "fast-lane"), g2.base_url)
        assert "fast-lane" not in _models(g2.base_url)
        assert httpx.get(f"{g2.base_url}/admin/api/policies/fast-lane").json()["retired"]["retired_by"] == "admin-api"

        back = _put(g2.base_url, "first")  # written again through the other gateway
        assert back["version"] == 2
        wait_until(lambda: g1.services.router.registry.active_version("fast-lane") == 2, 2.0,
                   what="the new version not live in the first gateway")
        assert _chat(g1.base_url, "fast-lane").headers["x-hybridgate-policy"] == "fast-lane@2"
