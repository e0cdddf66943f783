"""The admin surface against a hostile caller: a gateway API key (valid, revoked or expired) opens no
admin or console route; a web page that rebinds its DNS name to 127.0.0.1 gets nothing from a gateway
without an admin token; every admin answer tells browsers not to cache, sniff or frame it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import httpx

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayThread, running_gateway
from tests.support.wait import wait_until

ADMIN = "admin-token-for-security-tests-51c8e0"


def test_a_gateway_key_valid_revoked_or_expired_opens_no_admin_route(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, admin_token=ADMIN,
                                          require_keys=True)) as gw:
        admin = {"authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=gw.base_url, timeout=30) as c:
            valid = c.post("/admin/api/keys", headers=admin, json={"name": "tenant"}).json()
            revoked = c.post("/admin/api/keys", headers=admin, json={"name": "gone"}).json()
            assert c.delete(f"/admin/api/keys/{revoked['id']}", headers=admin).status_code == 200
            expired = c.post("/admin/api/keys", headers=admin, json={"name": "lapsed", "expires_in_s": 1}).json()
            wait_until(lambda: datetime.now(UTC) > datetime.fromisoformat(expired["expires_at"]), timeout_s=3)
            routes = [(m, r.path) for r in gw.app.routes if r.path.startswith("/admin")
                      for m in sorted(r.methods or ()) if m != "HEAD" and (m, r.path) != ("GET", "/admin/login")]
            assert len(routes) >= 25
            opened = []
            for key in (valid, revoked, expired):
                for auth in ({"authorization": f"Bearer {key['key']}"}, {"x-api-key": key["key"]}):
                    for method, path in routes:
                        url = re.sub(r"\{[^}]+\}", "fake-a", path.replace("{page}", "keys"))
                        r = c.request(method, url, headers={**auth, "content-type": "application/json"},
                                      content=b'{"token": "' + key["key"].encode() + b'"}')
                        # the sign-in form, asked again and again with a wrong token, holds the address back
                        refused = (401, 403, 429) if (method, path) == ("POST", "/admin/login") else (401, 403)
                        if r.status_code not in refused:
                            opened.append((key["name"], method, path, r.status_code))
            assert opened == []


def _rebound(gw: GatewayThread) -> dict[str, str]:
    """What a browser sends for a page of evil.example whose DNS name now points at 127.0.0.1."""
    site = f"evil.example:{gw.port}"
    return {"host": site, "origin": f"http://{site}", "sec-fetch-site": "same-origin"}


def test_a_rebound_dns_name_gets_nothing_from_a_gateway_without_an_admin_token(gateway: GatewayThread) -> None:
    assert gateway.settings.admin_token is None  # loopback-only mode: the peer address alone used to admit
    with httpx.Client(base_url=gateway.base_url, timeout=30) as c:
        assert c.get("/admin/api/keys", headers=_rebound(gateway)).status_code == 403
        made = c.post("/admin/api/keys", headers=_rebound(gateway), json={"name": "planted"})
        assert made.status_code == 403 and "localhost" in made.json()["error"]["message"]
        login = c.post("/admin/login", headers=_rebound(gateway), content=b"")
        assert login.status_code == 401 and "hg_console" not in login.headers.get("set-cookie", "")
        for host in (f"127.0.0.1:{gateway.port}", f"localhost:{gateway.port}", "localhost"):
            assert c.get("/admin/api/keys", headers={"host": host}).status_code == 200, host
        assert [k["name"] for k in c.get("/admin/api/keys").json()["data"]] == []


def test_every_admin_answer_is_not_cached_sniffed_or_framed(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    with (running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, admin_token=ADMIN)) as gw,
          httpx.Client(base_url=gw.base_url, timeout=30) as c):
        admin = {"authorization": f"Bearer {ADMIN}"}
        login_page = c.get("/admin/login")
        made = c.post("/admin/api/keys", headers=admin, json={"name": "shown-once"})  # the key's one showing
        answers = {"login page": login_page, "new key": made,
                   "key list": c.get("/admin/api/keys", headers=admin),
                   "budgets": c.get("/admin/api/budgets", headers=admin),
                   "console keys": c.get("/admin/api/console/keys", headers=admin),
                   "csv": c.get("/admin/api/console/dashboards/cost-quality?format=csv", headers=admin)}
        assert c.post("/admin/login", data={"token": ADMIN}).status_code == 303
        answers |= {"page": c.get("/admin/keys"), "script": c.get("/admin/static/console.js")}
        for what, r in answers.items():
            assert r.status_code < 300, (what, r.status_code)
            assert r.headers.get("x-content-type-options") == "nosniff", what
            assert r.headers.get("referrer-policy") == "same-origin", what
            if what != "script":
                assert r.headers.get("cache-control") == "no-store", what
        for what in ("login page", "page"):
            csp = answers[what].headers["content-security-policy"]
            assert answers[what].headers["x-frame-options"] == "DENY"
            for directive in ("default-src 'self'", "frame-ancestors 'none'", "base-uri 'none'",
                              "form-action 'self'", "object-src 'none'"):
                assert directive in csp, (what, directive)


def test_every_admin_error_is_not_cached_or_sniffed_either(
    fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path
) -> None:
    """An admin error (a refused token, a bad body, an unknown path or method under /admin) is an admin
    answer too; the data plane's errors are left as they were."""
    with (running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, admin_token=ADMIN)) as gw,
          httpx.Client(base_url=gw.base_url, timeout=30) as c):
        admin = {"authorization": f"Bearer {ADMIN}"}
        errors = {"no token": c.get("/admin/api/keys"),
                  "bad body": c.post("/admin/api/keys", headers=admin, json={"name": "x", "rpm": "ten"}),
                  "unknown path": c.get("/admin/api/nothing-here", headers=admin),
                  "wrong method": c.put("/admin/api/keys", headers=admin)}
        for what, r in errors.items():
            assert r.status_code in (400, 401, 404, 405), (what, r.status_code)
            assert r.json()["error"]["message"], what
            assert r.headers.get("x-content-type-options") == "nosniff", what
            assert r.headers.get("cache-control") == "no-store", what
        for r in (c.get("/v1/nothing-here"), c.post("/v1/chat/completions", json={"model": "fake-model"})):
            assert r.status_code in (400, 404) and "cache-control" not in r.headers, r.headers
