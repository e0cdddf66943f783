"""The admin console over HTTP on real Postgres: who gets in (admin token, session cookie, CSRF),
that no secret leaves in a page, JSON, CSV or log line, and that dashboard numbers equal SQL
computed here from the raw rows."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import event
from starlette.routing import Route

from backends.fake_provider import FakeProviderThread
from gateway.console.auth import SignInThrottle
from tests.support.console import (
    ADMIN_TOKEN,
    PROVIDER_KEY,
    PROVIDER_KEY_ENV,
    console_gateway,
    console_settings,
    seed,
    sql,
    sync_dsn,
)
from tests.support.harness import GatewayThread, running_gateway
from tests.support.net import free_port
from tests.support.wait import wait_until


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    try:
        with console_gateway(tmp_path_factory.mktemp("console")) as (gw, fp, db_url):
            seeded = seed(gw, db_url)
            admin = httpx.Client(
                base_url=gw.base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
            )
            key = admin.post("/admin/api/keys", json={"name": "tenant", "team": "team-x"}).json()["key"]
            yield {
                "gw": gw,
                "fp": fp,
                "db": db_url,
                "seeded": seeded,
                "admin": admin,
                "key": key,
                "logs": capture,
            }
            admin.close()
    finally:
        logging.getLogger().removeHandler(capture)
        os.environ.pop(PROVIDER_KEY_ENV, None)


def _signed_in(gw: GatewayThread) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=gw.base_url, timeout=30)
    r = c.post("/admin/login", data={"token": ADMIN_TOKEN})
    assert r.status_code == 303 and "hg_console" in r.cookies
    page = c.get("/admin/keys")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert csrf
    return c, csrf.group(1)


def _admin_routes(gw: GatewayThread) -> list[tuple[str, str]]:
    out = []
    for route in gw.app.routes:
        if isinstance(route, Route) and route.path.startswith("/admin"):
            path = re.sub(r"\{[^}]+\}", "x", route.path).replace("/admin/x", "/admin/keys")
            for method in sorted((route.methods or set()) - {"HEAD"}):
                out.append((method, path))
    return out


def test_anonymous_and_gateway_key_calls_to_every_admin_route_are_refused(env: dict[str, Any]) -> None:
    gw = env["gw"]
    routes = _admin_routes(gw)
    assert len(routes) > 30
    for auth in ({}, {"authorization": f"Bearer {env['key']}"}, {"x-api-key": env["key"]}):
        with httpx.Client(base_url=gw.base_url, headers=auth, timeout=30) as c:
            for method, path in routes:
                if path == "/admin/login":
                    continue  # the sign-in form itself (checked below)
                r = c.request(method, path, json={})
                assert r.status_code in (401, 403), (auth, method, path, r.status_code)
            signin = c.post("/admin/login", data={"token": env["key"]})
            assert signin.status_code == 401 and "hg_console" not in signin.cookies


def test_session_cookie_is_httponly_strict_and_post_needs_its_csrf_token(env: dict[str, Any]) -> None:
    gw = env["gw"]
    c = httpx.Client(base_url=gw.base_url, timeout=30)
    r = c.post("/admin/login", data={"token": ADMIN_TOKEN})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/admin" in cookie
    c.close()
    c, csrf = _signed_in(gw)
    try:
        assert c.get("/admin/api/console/dashboards").status_code == 200
        # without the CSRF token, or with another session's, a state change is refused
        assert c.post("/admin/api/keys", json={"name": "no-csrf"}).status_code == 403
        assert (
            c.post("/admin/api/keys", json={"name": "bad"}, headers={"x-csrf-token": "0" * 40}).status_code
            == 403
        )
        # a cross-site request is refused even with the token
        evil = {"x-csrf-token": csrf, "origin": "http://evil.example"}
        assert c.post("/admin/api/keys", json={"name": "evil"}, headers=evil).status_code == 403
        assert (
            c.post(
                "/admin/api/keys",
                json={"name": "evil"},
                headers={"x-csrf-token": csrf, "sec-fetch-site": "cross-site"},
            ).status_code
            == 403
        )
        ok = c.post("/admin/api/keys", json={"name": "with-csrf"}, headers={"x-csrf-token": csrf})
        assert ok.status_code == 201
        names = [k["name"] for k in env["admin"].get("/admin/api/keys").json()["data"]]
        assert "with-csrf" in names and "no-csrf" not in names and "evil" not in names
        # signing out needs the token too
        assert c.post("/admin/logout", data={}).status_code == 403
        assert c.post("/admin/logout", data={"csrf_token": csrf}).status_code == 303
    finally:
        c.close()


def _get(c: httpx.Client, path: str, **params: str) -> Any:
    r = c.get(path, params={"range": "7d", **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_dashboard_numbers_equal_sql_on_the_raw_rows(env: dict[str, Any]) -> None:
    admin, db = env["admin"], env["db"]
    # cost per model
    spend = _get(admin, "/admin/api/console/dashboards/spend-by-model")
    got = {row[0]: row[2] for row in spend["rows"]}
    want = dict(
        sql(db, "SELECT coalesce(served_model, '(none served)'), sum(coalesce(cost_usd, 0)) FROM requests GROUP BY 1")
    )
    assert got.keys() == want.keys()
    for m, v in want.items():
        assert got[m] == pytest.approx(v, rel=1e-9, abs=1e-12)
    # mean feedback per policy
    cq = _get(admin, "/admin/api/console/dashboards/cost-quality")
    got = {row[1]: (row[4], row[7]) for row in cq["rows"] if row[0] == "policy"}
    want2 = {
        p: (m, n)
        for p, m, n in sql(
            db,
            "SELECT r.policy, avg(f.score), count(*) FROM feedback f "
            "JOIN requests r ON r.id = f.request_id GROUP BY r.policy",
        )
    }
    assert got.keys() == want2.keys()
    for p, (m, n) in want2.items():
        assert got[p][0] == pytest.approx(float(m), rel=1e-9) and got[p][1] == n
    # p95 latency per deployment: the exact nearest-rank value lies in the reported 3% bin
    lat = _get(admin, "/admin/api/console/dashboards/latency")
    got = {row[0]: row[3] for row in lat["rows"]}
    want3 = dict(
        sql(
            db,
            "SELECT deployment, percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM attempts "
            "WHERE status = 'ok' GROUP BY deployment",
        )
    )
    assert got.keys() == want3.keys()
    for d, exact in want3.items():
        assert exact <= got[d] * (1 + 1e-9) <= exact * 1.03 * (1 + 1e-6), (d, exact, got[d])
    # filters: one key's spend
    k = sql(db, "SELECT api_key_id, sum(cost_usd) FROM requests GROUP BY api_key_id ORDER BY 1 LIMIT 1")[0]
    by_key = _get(admin, "/admin/api/console/dashboards/spend-by-model", key=k[0])
    assert sum(r[2] for r in by_key["rows"]) == pytest.approx(k[1], rel=1e-9)


def test_csv_export_holds_exactly_the_table_cells(env: dict[str, Any]) -> None:
    admin = env["admin"]
    index = _get(admin, "/admin/api/console/dashboards")["data"]
    assert len(index) >= 9
    for name in index:
        d = _get(admin, f"/admin/api/console/dashboards/{name}")
        text = admin.get(
            f"/admin/api/console/dashboards/{name}", params={"range": "7d", "format": "csv"}
        ).text
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0] == d["columns"] and rows[1:] == d["cells"], name
        assert d["rows"], f"{name} is empty on seeded data"


def test_request_log_filters_and_detail(env: dict[str, Any]) -> None:
    admin, db = env["admin"], env["db"]
    page = _get(admin, "/admin/api/console/requests", policy="cheap-demo", status="ok", limit="20")
    assert len(page["data"]) == 20 and all(
        r["policy"] == "cheap-demo" and r["status"] == "ok" for r in page["data"]
    )
    older = _get(
        admin,
        "/admin/api/console/requests",
        policy="cheap-demo",
        status="ok",
        limit="20",
        before=page["next_before"],
    )
    assert not {r["id"] for r in older["data"]} & {r["id"] for r in page["data"]}
    rid = sql(db, "SELECT request_id FROM feedback LIMIT 1")[0][0]
    detail = _get(admin, f"/admin/api/console/requests/{rid}")
    assert detail["request"]["route_reason"] == "seeded" and detail["attempts"] and detail["feedback"]


def test_request_log_pages_every_row_once_when_rows_share_a_timestamp(env: dict[str, Any]) -> None:
    """Keyset pagination on (created_at, id): five rows logged in the same microsecond, two a page, all
    come back once (a created_at-only cursor skipped the rest of a page boundary's timestamp)."""
    admin, db = env["admin"], env["db"]
    at = datetime.now(UTC) - timedelta(hours=1)
    with psycopg.connect(sync_dsn(db), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE tied AS SELECT * FROM requests WHERE id = 'r0'")
        for i in range(5):
            conn.execute("UPDATE tied SET id = %s, policy = 'tied-ts', created_at = %s", (f"tied-{i}", at))
            conn.execute("INSERT INTO requests SELECT * FROM tied")
    seen: list[str] = []
    cursor: dict[str, str] = {}
    for _ in range(5):
        page = _get(admin, "/admin/api/console/requests", policy="tied-ts", limit="2", **cursor)
        seen += [r["id"] for r in page["data"]]
        if not page["next_before"]:
            break
        cursor = {"before": page["next_before"], "before_id": page["next_before_id"]}
    assert sorted(seen) == [f"tied-{i}" for i in range(5)] and len(seen) == 5, seen


@pytest.mark.parametrize("limit", ["0", "-5", "501", "1000000000"])
def test_request_log_limit_out_of_range_is_a_400_naming_it(env: dict[str, Any], limit: str) -> None:
    r = env["admin"].get("/admin/api/console/requests", params={"limit": limit})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit", r.text


def test_no_secret_in_any_page_json_csv_or_log_line(env: dict[str, Any]) -> None:
    gw, admin, key = env["gw"], env["admin"], env["key"]
    secrets = [key, ADMIN_TOKEN, PROVIDER_KEY]
    # a client that pastes every secret into its prompt, and a provider error that echoes a key
    r = httpx.post(
        f"{gw.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
        json={"model": "fake-model", "messages": [{"role": "user", "content": " ".join(secrets)}]},
    )
    assert r.status_code == 200, r.text
    gw.call(gw.services.sink.flush())
    c, _csrf = _signed_in(gw)
    bodies = [
        c.get(p).text
        for p in (
            "/admin",
            "/admin/policies",
            "/admin/deployments",
            "/admin/keys",
            "/admin/budgets",
            "/admin/requests",
            "/admin/login",
        )
    ]
    for name in _get(admin, "/admin/api/console/dashboards")["data"]:
        bodies.append(admin.get(f"/admin/api/console/dashboards/{name}", params={"range": "7d"}).text)
        bodies.append(
            admin.get(f"/admin/api/console/dashboards/{name}", params={"range": "7d", "format": "csv"}).text
        )
    log_page = admin.get("/admin/api/console/requests", params={"range": "1h"}).json()
    bodies.append(str(log_page))
    rid = r.headers["x-request-id"]
    bodies.append(admin.get(f"/admin/api/console/requests/{rid}").text)
    for path in (
        "/admin/api/console/keys",
        "/admin/api/keys",
        "/admin/api/console/deployments",
        "/admin/api/breakers",
        "/admin/api/budgets",
        "/admin/api/policies",
    ):
        bodies.append(admin.get(path).text)
    assert any("[redacted]" in b for b in bodies)  # the prompt was shown, with the secrets masked
    for b in bodies + env["logs"].lines:
        for s in secrets:
            assert s not in b
    c.close()


def test_breaker_transitions_are_logged_for_the_history_dashboard(env: dict[str, Any]) -> None:
    admin = env["admin"]
    assert admin.post("/admin/api/breakers/fake-c", json={"mode": "open"}).json()["state"] == "open"
    assert admin.post("/admin/api/breakers/fake-c", json={"mode": None}).json()["state"] == "closed"
    svc = env["gw"].services
    env["gw"].call(svc.router.breakers.drain())
    d = _get(admin, "/admin/api/console/dashboards/breakers", range="1h")
    states = [row[2] for row in d["rows"] if row[1] == "fake-c"]
    assert states[-2:] == ["open", "closed"]
    assert math.isclose(d["chart"]["datasets"][0]["points"][-2]["y"], 1.0)


def test_a_time_filter_out_of_range_is_a_400_naming_it(env: dict[str, Any]) -> None:
    """Near datetime's ends a range's arithmetic or the UTC conversion overflowed into a 500."""
    admin = env["admin"]
    cases = [
        ("/admin/api/console/requests", {"until": "0001-01-01T01:00:00"}, "until"),
        ("/admin/api/console/requests", {"since": "0001-01-01T00:00:00+14:00"}, "since"),
        ("/admin/api/console/requests", {"until": "9999-12-31T23:59:59-05:00"}, "until"),
        ("/admin/api/console/requests", {"before": "0001-01-01T00:00:00+01:00"}, "before"),
        ("/admin/api/console/requests", {"before": "last tuesday"}, "before"),
        ("/admin/api/console/dashboards/over-time", {"until": "0001-01-02"}, "until"),
        ("/admin/api/console/dashboards/latency", {"since": "yesterday"}, "since"),
    ]
    for path, params, param in cases:
        r = admin.get(path, params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (params, r.text)
    assert admin.get("/admin/api/console/requests", params={"since": "1970-01-01T00:00:00Z"}).status_code == 200


def test_policy_diff_and_draft_evaluation_name_the_bad_parameter(env: dict[str, Any]) -> None:
    admin = env["admin"]
    spec = "name: diff-demo\nselector: {type: cheapest}\n"
    for text in (spec, spec + "description: second\n"):
        assert admin.put("/admin/api/policies/diff-demo", json={"spec_yaml": text}).status_code == 201
    diff = "/admin/api/console/policies/diff-demo/diff"
    assert "+description: second" in admin.get(diff, params={"a": "1", "b": "2"}).json()["diff"]
    r = admin.get(diff, params={"a": "x", "b": "1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "a", r.text
    r = admin.get(diff, params={"a": "1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "b", r.text
    r = admin.get(diff, params={"a": "1", "b": "1" * 5000})  # more digits than int() converts
    assert r.status_code == 400 and r.json()["error"]["param"] == "b", r.text
    assert admin.get(diff, params={"a": "1", "b": "99"}).status_code == 404

    url = "/admin/api/console/policies/diff-demo/evaluate"
    for body, param in (({"spec_yaml": spec, "request": "hello"}, "request"),  # was silently skipped
                        ({"spec_yaml": spec, "estimate": "no"}, "estimate"),  # "no" was read as yes
                        ({"spec_yaml": spec, "sample": {}}, "sample")):
        r = admin.post(url, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    ok = admin.post(url, json={"spec_yaml": spec, "estimate": False})
    assert ok.status_code == 200 and ok.json()["warnings"] == [] and "estimate" not in ok.json()


def test_a_forged_session_cookie_with_non_ascii_bytes_is_refused_not_a_500(env: dict[str, Any]) -> None:
    gw = env["gw"]
    forged = {"cookie": "hg_console=a.1.\xe9".encode("latin-1")}
    with httpx.Client(base_url=gw.base_url, timeout=30) as c:
        assert c.get("/admin", headers=forged).status_code == 401
        assert c.get("/admin/api/keys", headers=forged).status_code == 401


def test_the_console_key_listing_reads_spend_once_per_budget_period_not_once_per_key(env: dict[str, Any]) -> None:
    """Each key's spend over its own budget period, as before, from at most a few rollup queries per
    period: one query per key took seconds for a few thousand keys."""
    gw, admin = env["gw"], env["admin"]
    day = admin.post("/admin/api/keys", json={"name": "spend-day", "budget_usd": 5, "budget_period": "day"}).json()
    total = admin.post("/admin/api/keys", json={"name": "spend-total", "budget_usd": 5, "budget_period": "total"}).json()
    for k in (day, total, day):
        r = httpx.post(f"{gw.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {k['key']}"},
                       json={"model": "fake-cheap", "messages": [{"role": "user", "content": "spend"}]}, timeout=30)
        assert r.status_code == 200, r.text
    for i in range(40):
        assert admin.post("/admin/api/keys", json={"name": f"many-{i}"}).status_code == 201
    gw.call(gw.services.sink.flush())
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "rollup_requests_" in statement:
            statements.append(statement)

    engine = gw.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        listed = {k["id"]: k for k in _get(admin, "/admin/api/console/keys")["data"]}
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(listed) > 40 and len(statements) <= 3 * 4, len(statements)  # a few spans x 4 periods at most
    for k, n in ((day, 2), (total, 1)):
        want = sql(env["db"], "SELECT count(*), sum(cost_usd) FROM requests WHERE api_key_id = %s", k["id"])[0]
        got = listed[k["id"]]
        assert (got["requests"], got["spend_period"]) == (n, k["budget_period"]) and want[0] == n
        assert math.isclose(got["spent_usd"], want[1], rel_tol=1e-9) and got["spent_usd"] > 0
    assert listed[day["id"]]["spent_usd"] != listed[total["id"]]["spent_usd"]


def test_a_log_database_that_is_down_is_a_503_naming_it_and_deployments_still_list_breakers(
    tmp_path: Path,
) -> None:
    """Every admin and console read or change that needs the database answers 503 `store_unavailable`
    naming the log database (not a 500 internal error); the deployments listing needs it only for the last
    hour's figures, so it still lists each breaker's state, with a warning instead of those figures."""
    down = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone"
    with (
        FakeProviderThread() as fp,
        running_gateway(console_settings(fp.base_url, down, tmp_path)) as gw,
        httpx.Client(base_url=gw.base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as c,
    ):
        for method, path, body in (
            ("GET", "/admin/api/console/dashboards/cost-quality", None),
            ("GET", "/admin/api/console/requests", None),
            ("GET", "/admin/api/console/requests/some-id", None),
            ("GET", "/admin/api/console/keys", None),
            ("GET", "/admin/api/keys", None),
            ("POST", "/admin/api/keys", {"name": "while-down"}),
            ("GET", "/admin/api/policies", None),
        ):
            r = c.request(method, path, json=body)
            assert r.status_code == 503, (path, r.status_code, r.text)
            err = r.json()["error"]
            assert err["code"] == "store_unavailable" and r.headers["retry-after"] == "5", err
            assert err["message"].startswith("Log database unavailable, retry later"), err
        listing = c.get("/admin/api/console/deployments").json()
        assert [(d["deployment"], d["state"], d["attempts_1h"]) for d in listing["data"]] == [
            ("fake-a", "closed", None), ("fake-b", "closed", None), ("fake-c", "closed", None)]
        assert listing["warning"].startswith("Log database unavailable, retry later"), listing


def test_signing_out_of_a_session_that_had_ended_shows_the_sign_in_form(env: dict[str, Any]) -> None:
    """A page left open past its session (or signed out in another tab): its Sign out button answers
    with the sign-in form saying so, not a JSON error about a CSRF token; a live session still needs it."""
    with httpx.Client(base_url=env["gw"].base_url, timeout=30) as c:
        r = c.post("/admin/logout", data={"csrf_token": "from-the-old-page"})
        assert r.status_code == 401 and r.headers["content-type"].startswith("text/html"), r.text
        assert "You were already signed out" in r.text and 'id="token"' in r.text
    c, csrf = _signed_in(env["gw"])
    try:
        assert c.post("/admin/logout", data={"csrf_token": "0" * 40}).status_code == 403
        assert c.post("/admin/logout", data={"csrf_token": csrf}).status_code == 303
    finally:
        c.close()


def test_a_request_nothing_served_is_counted_as_none_served_not_as_the_policy_asked_for(env: dict[str, Any]) -> None:
    """A request every attempt of which failed was counted under the policy name the client asked for, as
    if a model of that name had answered ("probe-pol -> probe-pol" in the routing mix). It is counted as
    none served in every dashboard, consistently with the request log's rows (no served model)."""
    gw, admin, db = env["gw"], env["admin"], env["db"]
    spec = "name: probe-pol\nselector: {type: fixed, order: [fake-b]}\n"
    assert admin.put("/admin/api/policies/probe-pol", json={"spec_yaml": spec}).status_code == 201
    try:
        with httpx.Client(base_url=gw.base_url, headers={"authorization": f"Bearer {env['key']}"}, timeout=30) as c:
            failed = c.post("/v1/chat/completions",
                            json={"model": "probe-pol", "messages": [{"role": "user", "content": "[[fault:500]] hi"}]})
            served = c.post("/v1/chat/completions",
                            json={"model": "probe-pol", "messages": [{"role": "user", "content": "hi"}]})
        assert failed.status_code >= 500 and served.status_code == 200, (failed.text, served.text)
    finally:
        admin.post("/admin/api/breakers/fake-b", json={"mode": None})  # the failures may have opened it
    gw.call(gw.services.sink.flush())
    raw = dict(sql(db, "SELECT coalesce(served_model, '(none served)'), count(*) FROM requests "
                       "WHERE policy = 'probe-pol' GROUP BY 1"))
    assert raw == {"(none served)": 1, "fake-cheap": 1}

    mix: dict[tuple[str, str], int] = {}
    for _bucket, policy, model, n, _share in _get(admin, "/admin/api/console/dashboards/routing-mix",
                                                  range="1h", policy="probe-pol")["rows"]:
        mix[(policy, model)] = mix.get((policy, model), 0) + n
    assert mix == {("probe-pol", m): n for m, n in raw.items()}
    spend = _get(admin, "/admin/api/console/dashboards/spend-by-model", range="1h", policy="probe-pol")
    assert {row[0]: row[1] for row in spend["rows"]} == raw
    cq = _get(admin, "/admin/api/console/dashboards/cost-quality", range="1h", policy="probe-pol")
    assert {row[1]: row[2] for row in cq["rows"] if row[0] == "model"} == raw
    charted = {p["label"] for d in cq["chart"]["datasets"] if d["label"] != "policies" for p in d["points"]}
    assert "(none served)" not in charted and "probe-pol" not in charted
    # the request log agrees: one row served by fake-cheap, one by no model
    log = _get(admin, "/admin/api/console/requests", range="1h", policy="probe-pol")["data"]
    assert sorted((r["served_model"] or "(none served)", r["status"]) for r in log) == [
        ("(none served)", "error"), ("fake-cheap", "ok")]
    assert len(_get(admin, "/admin/api/console/requests", range="1h", policy="probe-pol", model="fake-cheap")["data"]) == 1


def test_a_range_that_starts_mid_hour_counts_exactly_what_the_request_log_holds_for_it(env: dict[str, Any]) -> None:
    """Rollups are hourly; a range starting and ending mid-hour was widened to whole hours, so "last 1h"
    could cover almost two and the dashboards counted rows the request log (same range) did not show.
    Every dashboard now counts exactly the rows of the range, as SQL on the raw rows and the log page do."""
    admin, db, seeded = env["admin"], env["db"], env["seeded"]
    hour = seeded.until.replace(minute=0, second=0, microsecond=0)
    since = hour - timedelta(days=2) + timedelta(minutes=23, seconds=7.25)
    until = hour - timedelta(hours=5) + timedelta(minutes=11, seconds=30)
    rng = {"since": since.isoformat(), "until": until.isoformat()}
    where = "WHERE created_at >= %s AND created_at < %s"
    want = {m: (n, c) for m, n, c in sql(db, "SELECT coalesce(served_model, '(none served)'), count(*), "
                                         f"sum(coalesce(cost_usd, 0)) FROM requests {where} GROUP BY 1", since, until)}
    spend = _get(admin, "/admin/api/console/dashboards/spend-by-model", **rng)
    assert (spend["since"], spend["until"]) == (since.isoformat(), until.isoformat())
    got = {row[0]: (row[1], row[2]) for row in spend["rows"]}
    assert got.keys() == want.keys()
    for m, (n, cost) in want.items():
        assert got[m][0] == n and got[m][1] == pytest.approx(cost, rel=1e-9, abs=1e-12), m
    hourly = {b.astimezone(UTC): n for b, n in sql(
        db, f"SELECT date_trunc('hour', created_at, 'UTC'), count(*) FROM requests {where} GROUP BY 1", since, until)}
    over = _get(admin, "/admin/api/console/dashboards/over-time", **rng)
    assert {datetime.fromisoformat(row[0]).astimezone(UTC): row[1] for row in over["rows"]} == hourly
    # the request log's page for the same range holds exactly as many rows
    log = _get(admin, "/admin/api/console/requests", limit="500", **rng)["data"]
    total = sum(n for n, _ in want.values())
    assert len(log) == total < 500 and all(since <= datetime.fromisoformat(r["created_at"]) < until for r in log)
    lat = _get(admin, "/admin/api/console/dashboards/latency", **rng)
    ok_tries = dict(sql(db, "SELECT deployment, count(*) FROM attempts WHERE status = 'ok' AND latency_ms IS NOT NULL"
                            " AND started_at >= %s AND started_at < %s GROUP BY 1", since, until))
    assert {row[0]: row[1] for row in lat["rows"]} == ok_tries


def test_signing_out_revokes_the_session_in_every_gateway_process(env: dict[str, Any], tmp_path: Path) -> None:
    """A copy of the session cookie taken before sign-out (another browser, a stolen cookie) is refused after
    it: at once by the process that took the sign-out, and within its sync interval by another process on
    the same database. Another session goes on working."""
    gw = env["gw"]
    with running_gateway(console_settings(env["fp"].base_url, env["db"], tmp_path)) as other:
        c, csrf = _signed_in(gw)
        kept, _ = _signed_in(gw)
        try:
            copy = {"cookie": f"hg_console={c.cookies['hg_console']}"}

            def status(base: str, path: str = "/admin/api/console/dashboards") -> int:
                return httpx.get(base + path, headers=copy, timeout=30).status_code

            assert (status(gw.base_url), status(other.base_url)) == (200, 200)
            assert c.post("/admin/logout", data={"csrf_token": csrf}).status_code == 303
            assert status(gw.base_url) == 401
            assert status(gw.base_url, "/admin/keys") == 401  # a page: the sign-in form
            changed = httpx.post(gw.base_url + "/admin/api/keys", json={"name": "after-sign-out"},
                                 headers=copy | {"x-csrf-token": csrf}, timeout=30)
            assert changed.status_code == 401, changed.text
            wait_until(lambda: status(other.base_url) == 401, 5, what="the other process still took the cookie")
            assert kept.get("/admin/api/console/dashboards").status_code == 200
        finally:
            c.close()
            kept.close()


def _from(gw: GatewayThread, address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x is this machine's loopback)."""
    return httpx.Client(base_url=gw.base_url, timeout=30, transport=httpx.HTTPTransport(local_address=address))


def test_wrong_admin_tokens_are_throttled_per_address_and_logged_once(env: dict[str, Any]) -> None:
    gw = env["gw"]
    with _from(gw, "127.0.0.2") as c, _from(gw, "127.0.0.3") as elsewhere:
        for _ in range(5):
            assert c.post("/admin/login", data={"token": "guess"}).status_code == 401
        for token in ("guess", ADMIN_TOKEN):  # not even compared while held back: a guess tells nothing
            r = c.post("/admin/login", data={"token": token})
            assert r.status_code == 429 and "hg_console" not in r.cookies, r.text
            assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["cache-control"] == "no-store"
            err = r.json()["error"]
            assert (err["type"], err["code"]) == ("rate_limit_error", "sign_in_throttled") and err["message"], err
        assert elsewhere.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303
    logged = [line for line in env["logs"].lines if "wrong admin tokens from 127.0.0.2" in line]
    assert len(logged) == 1, logged


def test_the_sign_in_throttle_holds_an_address_back_for_its_window_only_and_stays_bounded() -> None:
    now = [1000.0]
    throttle = SignInThrottle(limit=3, window_s=60.0, max_addresses=50, clock=lambda: now[0])
    assert [throttle.failed("10.0.0.1") for _ in range(3)] == [False, False, True]  # the third: logged
    assert (throttle.retry_after("10.0.0.1"), throttle.retry_after("10.0.0.2")) == (60, 0)
    now[0] += 59.5
    assert throttle.retry_after("10.0.0.1") == 1
    now[0] += 0.5
    assert throttle.retry_after("10.0.0.1") == 0  # a right token gets in a window after the last guess counted
    throttle.failed("10.0.0.1")
    throttle.succeeded("10.0.0.1")  # signed in: its count starts again
    assert [throttle.failed("10.0.0.1") for _ in range(3)] == [False, False, True]
    for i in range(1000):  # guesses from many addresses
        throttle.failed(f"10.1.{i // 250}.{i % 250}")
    assert len(throttle) <= 50 and throttle.retry_after("10.1.3.249") == 0


def test_sign_in_returns_to_the_console_page_asked_for_and_nowhere_else(env: dict[str, Any]) -> None:
    gw = env["gw"]
    with httpx.Client(base_url=gw.base_url, timeout=30) as c:
        asked = c.get("/admin/requests?range=24h")
        assert asked.status_code == 401 and 'name="next" value="/admin/requests?range=24h"' in asked.text
        r = c.post("/admin/login", data={"token": ADMIN_TOKEN, "next": "/admin/requests?range=24h"})
        assert r.status_code == 303 and r.headers["location"] == "/admin/requests?range=24h"
        assert 'name="next" value="/admin/keys"' in c.get("/admin/login", params={"next": "/admin/keys"}).text
    for bad in ("https://evil.example/admin", "//evil.example/admin", "/\\evil.example/admin", "\\\\evil.example",
                "/admin/../evil", "/admin/keys/../../evil", "/admin\\keys", "/admin/nope", "/adminx", "/admin/",
                "admin/keys", "javascript:alert(1)", "/admin/keys\r\nset-cookie: x=1", "/admin/keys#frag",
                "/admin/keys?x=<b>", "/admin/keys?x=\\y", "/admin/keys?x= y", "/admin@evil.example"):
        with httpx.Client(base_url=gw.base_url, timeout=30) as c:
            r = c.post("/admin/login", data={"token": ADMIN_TOKEN, "next": bad})
            assert r.status_code == 303 and r.headers["location"] == "/admin", (bad, r.headers.get("location"))
            assert 'name="next"' not in c.get("/admin/login", params={"next": bad}).text, bad
