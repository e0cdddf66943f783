"""API keys with an expiry: served until it, refused from it on (401 with a message saying so) in every
gateway process, cached or not; extended, cleared or refused (a 400 naming the field) by the admin API;
set by the CLI; added and removed by its migration on both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from backends.fake_provider import FakeProviderThread
from gateway import cli
from requestlog import migrate
from requestlog.urls import to_sync_url
from tests.support.gateway import MSG, gateway_settings, sdk
from tests.support.harness import GatewayProcess, GatewayThread, running_gateway
from tests.support.wait import wait_until

CHAT = {"model": "fake-model", "messages": MSG, "max_tokens": 4}
MESSAGES = {"model": "fake-model", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture()
def keyed_gateway(fake_provider: FakeProviderThread, sqlite_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    with running_gateway(gateway_settings(fake_provider.base_url, sqlite_url, tmp_path, require_keys=True)) as gw:
        yield gw


def _ts(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def _wait_past(expires_at: str) -> None:
    when = datetime.fromisoformat(expires_at)
    wait_until(lambda: datetime.now(UTC) > when, timeout_s=15, what=f"the clock to pass {expires_at}")


def _chat(c: httpx.Client, base_url: str, key: str) -> httpx.Response:
    return c.post(f"{base_url}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})


def _messages(c: httpx.Client, base_url: str, key: str) -> httpx.Response:
    return c.post(f"{base_url}/v1/messages", json=MESSAGES,
                  headers={"x-api-key": key, "anthropic-version": "2023-06-01"})


def _assert_expired(chat: httpx.Response, messages: httpx.Response, expires_at: str) -> None:
    """Refused as a revoked key is (401, each API's own shape), with a message that says it expired and when."""
    assert chat.status_code == 401, chat.text
    err = chat.json()["error"]
    assert err["code"] == "expired_api_key" and err["type"] == "invalid_request_error", err
    when = _ts(datetime.fromisoformat(expires_at).replace(microsecond=0))
    assert "expired" in err["message"] and when in err["message"], err
    assert messages.status_code == 401, messages.text
    body = messages.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
    assert "expired" in body["error"]["message"] and when in body["error"]["message"], body


def test_a_key_works_until_its_expiry_then_is_refused_saying_so_and_its_history_stays(
    keyed_gateway: GatewayThread, sqlite_url: str
) -> None:
    gw = keyed_gateway
    with httpx.Client(timeout=10) as c:
        key = c.post(f"{gw.base_url}/admin/api/keys", json={
            "name": "contractor", "expires_at": _ts(_soon(3)), "budget_usd": 5, "rpm_limit": 100}).json()
        assert key["status"] == "active" and key["expires_at"]
        # served, and now in this process's key cache (5 s TTL, longer than the key has left)
        assert _chat(c, gw.base_url, key["key"]).status_code == 200
        assert _messages(c, gw.base_url, key["key"]).status_code == 200
        _wait_past(key["expires_at"])

        secret = key["key"]
        _assert_expired(_chat(c, gw.base_url, secret), _messages(c, gw.base_url, secret), key["expires_at"])
        with pytest.raises(openai.AuthenticationError) as ei:
            sdk(gw, key=secret).chat.completions.create(model="fake-model", messages=MSG)  # type: ignore[arg-type]
        assert ei.value.code == "expired_api_key"
        revoked = c.post(f"{gw.base_url}/admin/api/keys", json={"name": "gone"}).json()
        c.delete(f"{gw.base_url}/admin/api/keys/{revoked['id']}")
        assert _chat(c, gw.base_url, revoked["key"]).json()["error"]["code"] == "invalid_api_key"  # unchanged

        listed = {k["id"]: k for k in c.get(f"{gw.base_url}/admin/api/keys").json()["data"]}
        assert listed[key["id"]]["status"] == "expired" and listed[revoked["id"]]["status"] == "revoked"
        assert listed[key["id"]]["budget_usd"] == 5 and listed[key["id"]]["rpm_limit"] == 100

        def console_row() -> dict[str, Any] | None:
            rows = {k["id"]: k for k in c.get(f"{gw.base_url}/admin/api/console/keys").json()["data"]}
            return rows[key["id"]] if rows[key["id"]]["requests"] == 2 else None

        row = wait_until(console_row, what="the key's two requests on the console's keys page")
        assert row["status"] == "expired" and row["expires_at"] == key["expires_at"] and row["budget_usd"] == 5

    engine = sa.create_engine(to_sync_url(sqlite_url))
    try:  # the requests the key made while it was valid stay in the log under its id
        def logged() -> int:
            with engine.connect() as conn:
                return conn.execute(sa.text(
                    "SELECT count(*) FROM requests WHERE api_key_id = :k AND http_status = 200"), {"k": key["id"]},
                ).scalar_one()
        assert wait_until(logged, what="the key's two requests in the log") == 2
    finally:
        engine.dispose()


def test_patch_extends_clears_and_revives_an_expiry(keyed_gateway: GatewayThread) -> None:
    gw = keyed_gateway
    with httpx.Client(base_url=gw.base_url, timeout=10) as c:
        lapsing = c.post("/admin/api/keys", json={"name": "lapsing", "expires_in_s": 3}).json()
        extended = c.post("/admin/api/keys", json={"name": "extended", "expires_in_s": 3}).json()
        for k in (lapsing, extended):
            assert _chat(c, gw.base_url, k["key"]).status_code == 200  # cached
        later = _soon(3600)
        r = c.patch(f"/admin/api/keys/{extended['id']}", json={"expires_at": _ts(later)})
        assert r.status_code == 200 and datetime.fromisoformat(r.json()["expires_at"]) == later, r.text
        _wait_past(lapsing["expires_at"])
        _wait_past(extended["expires_at"])  # the expiry it was created with

        assert _chat(c, gw.base_url, lapsing["key"]).status_code == 401
        assert _chat(c, gw.base_url, extended["key"]).status_code == 200
        # an expired key is not a revoked one: an extension brings it back at once
        r = c.patch(f"/admin/api/keys/{lapsing['id']}", json={"expires_in_s": 60})
        assert r.status_code == 200 and r.json()["status"] == "active", r.text
        assert _chat(c, gw.base_url, lapsing["key"]).status_code == 200
        r = c.patch(f"/admin/api/keys/{lapsing['id']}", json={"expires_at": None})
        assert r.status_code == 200 and r.json()["expires_at"] is None and r.json()["status"] == "active"
        assert c.patch(f"/admin/api/keys/{lapsing['id']}", json={"rpm_limit": 50}).json()["expires_at"] is None
        assert c.post("/admin/api/keys", json={"name": "forever"}).json()["expires_at"] is None


INVALID = [
    ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "future"),
    ({"expires_at": "2099-01-01T00:00:00"}, "expires_at", "timezone"),
    ({"expires_at": "2099-01-01"}, "expires_at", "timezone"),
    ({"expires_at": "next tuesday"}, "expires_at", "RFC 3339"),
    ({"expires_at": "2099-02-30T00:00:00Z"}, "expires_at", "valid date"),
    ({"expires_at": 4102444800}, "expires_at", "RFC 3339"),
    ({"expires_in_s": 0}, "expires_in_s", "greater than"),
    ({"expires_in_s": "3600"}, "expires_in_s", "integer"),
    ({"expires_in_s": 10**12}, "expires_in_s", "less than"),
    ({"expires_in_s": 60, "expires_at": "2099-01-01T00:00:00Z"}, "expires_in_s", "not both"),
]


def test_an_invalid_expiry_is_a_400_naming_the_field_and_changes_nothing(keyed_gateway: GatewayThread) -> None:
    with httpx.Client(base_url=keyed_gateway.base_url, timeout=10) as c:
        key = c.post("/admin/api/keys", json={"name": "k", "expires_in_s": 3600}).json()
        before = c.get("/admin/api/keys").json()["data"]
        for body, param, says in INVALID:
            for r in (c.post("/admin/api/keys", json={"name": "bad", **body}),
                      c.patch(f"/admin/api/keys/{key['id']}", json=body)):
                assert r.status_code == 400, (body, r.text)
                err = r.json()["error"]
                assert err["param"] == param and err["code"] == "invalid_value" and says in err["message"], err
        assert c.get("/admin/api/keys").json()["data"] == before


def test_a_second_gateway_sharing_the_database_refuses_an_expired_key_it_had_cached(
    fake_provider: FakeProviderThread, fresh_pg_url: str, tmp_path: Path
) -> None:
    """No Redis: nothing tells the second process that a key expired or was extended; its own clock and
    the database do, though the key sits in its cache for longer than it has left."""
    migrate.upgrade(fresh_pg_url)
    s1 = gateway_settings(fake_provider.base_url, fresh_pg_url, tmp_path / "g1", require_keys=True,
                          admin_token="adm-secret")
    s2 = gateway_settings(fake_provider.base_url, fresh_pg_url, tmp_path / "g2", require_keys=True,
                          admin_token="adm-secret")
    admin = {"authorization": "Bearer adm-secret"}
    with (running_gateway(s1) as g1, GatewayProcess(s2, tmp_path / "g2", name="g2") as g2,
          httpx.Client(timeout=10) as c):
        expires_at = _ts(_soon(4))
        lapsing = c.post(f"{g1.base_url}/admin/api/keys", json={"name": "lapsing", "expires_at": expires_at},
                         headers=admin).json()
        extended = c.post(f"{g1.base_url}/admin/api/keys", json={"name": "extended", "expires_at": expires_at},
                          headers=admin).json()
        for k in (lapsing, extended):
            for gw in (g1, g2):
                assert _chat(c, gw.base_url, k["key"]).status_code == 200  # both processes cache both keys
        assert datetime.now(UTC) < datetime.fromisoformat(expires_at), "too slow: the keys expired while in use"
        r = c.patch(f"{g1.base_url}/admin/api/keys/{extended['id']}", json={"expires_in_s": 3600}, headers=admin)
        assert r.status_code == 200, r.text
        _wait_past(expires_at)

        for gw in (g2, g1):
            _assert_expired(_chat(c, gw.base_url, lapsing["key"]), _messages(c, gw.base_url, lapsing["key"]),
                            lapsing["expires_at"])
            assert _chat(c, gw.base_url, extended["key"]).status_code == 200  # read again at the old expiry


def test_the_cli_creates_keys_that_expire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database_url: sqlite+aiosqlite:///{tmp_path / 'k.db'}\nlocal_model: {{enabled: false}}\n")
    hg = ["--config", str(cfg)]

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main([*hg, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    assert run("migrate")[0] == 0
    start = datetime.now(UTC)
    code, out, _ = run("keys", "create", "demo", "--expires-in", "7d")
    created = json.loads(out)
    assert code == 0 and created["status"] == "active"
    assert timedelta(days=7) <= datetime.fromisoformat(created["expires_at"]) - start < timedelta(days=7, minutes=1)
    code, out, _ = run("keys", "create", "ci", "--expires-at", "2099-01-31T18:00:00+01:00")
    assert code == 0 and json.loads(out)["expires_at"] == "2099-01-31T17:00:00+00:00"
    for argv, field in ((("--expires-in", "soon"), "expires_in"), (("--expires-in", "0"), "expires_in_s"),
                        (("--expires-at", "2099-01-31T18:00:00"), "expires_at"),
                        (("--expires-at", "2001-01-01T00:00:00Z"), "expires_at")):
        code, out, err = run("keys", "create", "bad", *argv)
        assert code == 2 and out == "" and err.startswith(f"invalid {field}:"), (argv, code, out, err)
    with pytest.raises(SystemExit):  # one or the other
        cli.main([*hg, "keys", "create", "x", "--expires-in", "1h", "--expires-at", "2099-01-01T00:00:00Z"])
    listed = json.loads(run("keys", "list")[1])
    assert sorted(k["name"] for k in listed) == ["ci", "demo"]


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("fresh_pg_url"))
    return f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"


def test_the_expiry_migration_upgrades_and_downgrades_keeping_the_keys(empty_db: str) -> None:
    migrate.upgrade(empty_db, "0007_hardening")
    engine = sa.create_engine(to_sync_url(empty_db), poolclass=sa.pool.NullPool)
    insert = sa.text("INSERT INTO api_keys (id, name, key_hash, key_prefix, created_at)"
                     " VALUES ('k1', 'old', 'h1', 'hg-x', CURRENT_TIMESTAMP)")

    def columns() -> set[str]:
        return {col["name"] for col in sa.inspect(engine).get_columns("api_keys")}

    try:
        with engine.begin() as conn:
            conn.execute(insert)
        assert "expires_at" not in columns()
        migrate.upgrade(empty_db, "0008_key_expiry")
        assert "expires_at" in columns()
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT id, expires_at FROM api_keys")).all() == [("k1", None)]
            conn.execute(sa.text("UPDATE api_keys SET expires_at = :t"), {"t": datetime(2099, 1, 1, tzinfo=UTC)})
        migrate.downgrade(empty_db, "0007_hardening")
        assert "expires_at" not in columns()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id, name FROM api_keys")).all() == [("k1", "old")]
        migrate.upgrade(empty_db)
        assert migrate.current(empty_db) == migrate.head()
    finally:
        engine.dispose()
