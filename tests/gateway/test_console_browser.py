"""The admin console in a real browser (Playwright driving Debian's Chromium) against a running
gateway on real Postgres with seeded traffic. Screenshots go to test-artifacts/console/."""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from backends.fake_provider import FakeProviderThread
from tests.support.console import (
    ADMIN_TOKEN,
    ARTIFACTS,
    PROVIDER_KEY,
    PROVIDER_KEY_ENV,
    console_gateway,
    console_settings,
    seed,
)
from tests.support.harness import running_gateway
from tests.support.net import free_port
from tests.support.wait import wait_until

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)"
)

BAD_POLICY = """name: console-draft
description: A draft with a typo.

selector:
  type: cheapest
  expected_output_tokens: lots
"""
GOOD_POLICY = BAD_POLICY.replace("lots", "256").replace("with a typo", "that picks the cheapest")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
    try:
        with console_gateway(tmp_path_factory.mktemp("console-browser")) as (gw, fp, db_url):
            seed(gw, db_url)
            with httpx.Client(
                base_url=gw.base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as admin:
                key = admin.post("/admin/api/keys", json={"name": "browser-tenant"}).json()["key"]
            yield {"gw": gw, "fp": fp, "db": db_url, "key": key}
    finally:
        os.environ.pop(PROVIDER_KEY_ENV, None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(env: dict[str, Any], browser: Any) -> Iterator[Any]:
    """A signed-in page (one browser context for the module)."""
    ctx = browser.new_context(base_url=env["gw"].base_url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    pg = ctx.new_page()
    pg.goto("/admin/login")
    pg.fill("#token", ADMIN_TOKEN)
    pg.click("button[type=submit]")
    pg.wait_for_url("**/admin")
    yield pg
    ctx.close()


def _shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def answer_dialog(asked: list[str], accept: bool) -> Any:
    """A `page.once("dialog", ...)` handler that notes the dialog's message in ``asked`` and accepts or
    dismisses it."""
    def handle(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()
    return handle


def test_sign_in_needs_the_admin_token(env: dict[str, Any], browser: Any) -> None:
    ctx = browser.new_context(base_url=env["gw"].base_url)
    pg = ctx.new_page()
    resp = pg.goto("/admin/policies")
    assert resp.status == 401 and pg.locator("#token").is_visible()
    pg.fill("#token", env["key"])  # a gateway key never opens the console
    pg.click("button[type=submit]")
    assert pg.locator("#login-error").inner_text() == "Wrong admin token."
    pg.fill("#token", ADMIN_TOKEN)
    pg.click("button[type=submit]")
    pg.wait_for_url("**/admin/policies")  # the page asked for, through the wrong token and the right one
    pg.locator("#policy-list a").first.wait_for()
    cookies = {c["name"]: c for c in ctx.cookies()}
    assert cookies["hg_console"]["httpOnly"] and cookies["hg_console"]["sameSite"] == "Strict"
    ctx.close()


def test_every_dashboard_draws_its_chart_from_seeded_data_and_csv_matches_table(page: Any) -> None:
    page.goto("/admin")
    page.wait_for_selector("body[data-loaded='1']")
    # the range the figures cover, to the second: a week back from now, not widened to whole hours
    covered = page.locator("#dash-range").inner_text()
    assert covered.startswith("Figures for ") and covered.endswith(" UTC."), covered
    since, until = (datetime.fromisoformat(t).replace(tzinfo=UTC) for t in covered[12:-5].split(" to "))
    assert until - since == timedelta(days=7) and abs(datetime.now(UTC) - until) < timedelta(minutes=5), covered
    sections = page.locator("section.dash")
    names = [sections.nth(i).get_attribute("data-dashboard") for i in range(sections.count())]
    assert len(names) >= 9
    for name in names:
        sec = page.locator(f"#dash-{name}")
        points = page.evaluate(
            "(n) => { const c = Chart.getChart(document.querySelector(`#dash-${n} canvas`));"
            " return c ? c.data.datasets.reduce((s, d) => s + d.data.length, 0) : -1; }",
            name,
        )
        assert int(sec.get_attribute("data-rows")) > 0, name
        assert points > 0, name
        cells = [[td.inner_text() for td in tr.locator("td").all()] for tr in sec.locator("tbody tr").all()]
        href = sec.locator("a.csv").get_attribute("href")
        text = page.request.get(href).text()
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0] == [th.inner_text() for th in sec.locator("thead th").all()]
        assert [[c.strip() for c in r] for r in rows[1:]] == [[c.strip() for c in r] for r in cells], name
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        sec.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"))
    _shot(page, "dashboards")


def test_policy_validate_at_line_fix_simulate_estimate_activate_and_roll_back(page: Any) -> None:
    page.goto("/admin/policies")
    page.fill("#new-policy input[name=name]", "console-draft")
    page.click("#new-policy button")
    page.fill("#policy-yaml", BAD_POLICY)
    page.click("#btn-validate")
    err = page.locator("#policy-errors li.error-line").first
    err.wait_for()
    assert err.get_attribute("data-line") == "6" and "line 6" in err.inner_text()
    assert "expected_output_tokens" in err.inner_text()
    assert page.locator("#gutter div.bad").inner_text() == "6"
    page.fill("#policy-yaml", GOOD_POLICY)
    page.click("#btn-evaluate")
    page.wait_for_selector("#simulate-result")
    assert "fake-b" in page.locator("#simulate-result").inner_text()  # the cheapest deployment
    table = page.locator("#estimate-table")
    table.wait_for()
    text = table.inner_text()
    for method in ("ips", "snips", "dr"):
        assert method in text
    assert "effective sample size" in page.locator("#estimate-out h4").inner_text()
    _shot(page, "policy-estimate")
    page.click("#btn-activate")
    page.wait_for_selector("#policy-versions[data-active='1']")
    page.fill("#policy-yaml", GOOD_POLICY.replace("picks the cheapest", "picks the cheapest, v2"))
    page.click("#btn-activate")
    page.wait_for_selector("#policy-versions[data-active='2']")
    page.click("#btn-rollback")
    page.wait_for_selector("#policy-versions[data-active='1']")
    assert "Rolled back console-draft to version 1" in page.locator("#flash").inner_text()


def test_policy_retire_asks_first_stops_routing_and_saving_brings_it_back(env: dict[str, Any], page: Any) -> None:
    base, key = env["gw"].base_url, env["key"]
    spec = GOOD_POLICY.replace("console-draft", "retire-me")
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        assert admin.put("/admin/api/policies/retire-me", json={"spec_yaml": spec}).status_code == 201

        def chat() -> int:
            return httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": "retire-me", "messages": [{"role": "user", "content": "hi"}]}).status_code

        assert chat() == 200
        page.goto("/admin/policies")
        page.click("a[data-policy='retire-me']")
        page.wait_for_selector("#policy-versions[data-active='1']")
        asked: list[str] = []
        answer = functools.partial(answer_dialog, asked)

        page.once("dialog", answer(False))  # cancelled: nothing changes
        page.click("#btn-retire")
        assert len(asked) == 1 and "Retire policy retire-me?" in asked[0]
        assert admin.get("/admin/api/policies/retire-me").json()["active_version"] == 1

        page.once("dialog", answer(True))
        page.click("#btn-retire")
        page.wait_for_selector("#policy-versions[data-retired='1'][data-active='']")
        sync_api.expect(page.locator("#flash")).to_have_text("Retired retire-me (was version 1).")
        assert "(retired)" in page.locator("a[data-policy='retire-me']").inner_text()
        assert "retired" in page.locator("#policy-title").inner_text()
        assert chat() == 404
        assert admin.get("/admin/api/policies/retire-me").json()["retired"]["retired_by"] == "console"
        _shot(page, "policy-retired")

        page.once("dialog", answer(True))  # retiring it again: the API's error, shown like the other actions'
        page.click("#btn-retire")
        sync_api.expect(page.locator("#flash")).to_contain_text("No live policy named 'retire-me'")

        page.click("#btn-activate")  # saving the open text makes it live again, as the next version
        page.wait_for_selector("#policy-versions[data-active='2'][data-retired='']")
        assert chat() == 200


def test_new_key_secret_is_shown_exactly_once(page: Any) -> None:
    page.goto("/admin/keys")
    page.fill("#key-form input[name=name]", "browser-key")
    page.fill("#key-form input[name=allowed_models]", "fake-cheap")
    page.fill("#key-form input[name=budget_usd]", "5")
    page.select_option("#key-form select[name=budget_period]", "month")
    page.click("#key-form button")
    secret = page.locator("#new-key-secret")
    secret.wait_for()
    value = secret.inner_text()
    assert value.startswith("hg-") and len(value) > 30
    row = page.locator("#keys tr", has_text="browser-key")
    row.wait_for()
    assert (
        "fake-cheap" in row.inner_text()
        and value not in page.content()[: page.content().find("new-key-secret")]
    )
    page.reload()
    page.locator("#keys tr", has_text="browser-key").wait_for()
    assert value not in page.content()
    assert page.locator("#new-key").is_hidden()


def test_tripped_breaker_shows_open_on_deployments_page(env: dict[str, Any], page: Any) -> None:
    env["fp"].set_faults(models={"fake-strong": "500"})
    try:
        with httpx.Client(
            base_url=env["gw"].base_url, headers={"authorization": f"Bearer {env['key']}"}
        ) as c:
            for _ in range(4):
                c.post(
                    "/v1/chat/completions",
                    json={"model": "fake-strong", "messages": [{"role": "user", "content": "hi"}]},
                )
    finally:
        env["fp"].set_faults()
    page.goto("/admin/deployments")
    state = page.locator("tr[data-deployment='fake-c'] .state")
    sync_api.expect(state).to_have_text("open", timeout=10_000)
    assert page.locator("tr[data-deployment='fake-b'] .state").inner_text() == "closed"
    _shot(page, "deployments")
    assert page.locator("tr[data-deployment='fake-c'] .forced").count() == 0  # opened by the traffic
    page.click("tr[data-deployment='fake-c'] button[data-force='closed']")
    sync_api.expect(page.locator("tr[data-deployment='fake-c'] .state")).to_have_text("closed")
    sync_api.expect(page.locator("tr[data-deployment='fake-c'] .forced")).to_have_text("forced")
    page.click("tr[data-deployment='fake-c'] button[data-force='auto']")
    sync_api.expect(page.locator("tr[data-deployment='fake-c'] .forced")).to_have_count(0)


def test_request_log_filters_and_opens_a_request(page: Any) -> None:
    page.goto("/admin/requests")
    page.select_option("#log-filters select[name=range]", "7d")
    page.fill("#log-filters input[name=policy]", "bandit-demo")
    page.click("#log-filters button")
    sync_api.expect(page.locator("#log tbody tr").first).to_contain_text("bandit-demo")
    rows = page.locator("#log tbody tr")
    for i in range(min(rows.count(), 10)):
        assert "bandit-demo" in rows.nth(i).inner_text()
    rows.first.click()
    page.locator("#detail").wait_for()
    assert "seeded" in page.locator("#detail").inner_text()
    assert page.locator("#detail-attempts tbody tr").count() >= 1


def test_budgets_page_sets_a_team_budget(page: Any) -> None:
    page.goto("/admin/budgets")
    page.fill("#budget-form input[name=scope]", "team:team1")
    page.fill("#budget-form input[name=limit_usd]", "25")
    page.click("#budget-form button")
    row = page.locator("tr[data-scope='team:team1']")
    row.wait_for()
    assert "25" in row.inner_text() and "admin" in row.inner_text()


PAGES = ("", "policies", "deployments", "keys", "budgets", "requests")


@pytest.fixture()
def fresh(env: dict[str, Any], browser: Any) -> Iterator[dict[str, Any]]:
    """A page signed in on a browser context of its own, with every script error, console error,
    failed request and HTTP error response it sees from the sign-in page on."""
    ctx = browser.new_context(base_url=env["gw"].base_url)
    ctx.set_default_timeout(15_000)
    pg = ctx.new_page()
    seen: dict[str, Any] = {"page": pg, "ctx": ctx, "pageerror": [], "console": [], "failed": []}
    pg.on("pageerror", lambda e: seen["pageerror"].append(str(e)))
    pg.on("console", lambda m: seen["console"].append(m.text) if m.type == "error" else None)
    pg.on("requestfailed", lambda r: seen["failed"].append(f"{r.url} {r.failure}"))
    pg.on("response", lambda r: seen["failed"].append(f"{r.url} {r.status}") if r.status >= 400 else None)
    pg.goto("/admin/login")
    pg.fill("#token", ADMIN_TOKEN)
    pg.click("button[type=submit]")
    pg.wait_for_url("**/admin")
    pg.wait_for_selector("body[data-loaded='1']")
    yield seen
    ctx.close()


def test_every_page_loads_without_a_script_error_or_a_failed_request(fresh: dict[str, Any]) -> None:
    pg = fresh["page"]
    for name in PAGES:
        pg.goto(f"/admin/{name}")
        pg.wait_for_load_state("networkidle")
        assert pg.locator("#flash").inner_text() == "", name
    assert (fresh["pageerror"], fresh["console"], fresh["failed"]) == ([], [], [])


def test_an_api_failure_is_shown_on_every_page_not_a_blank_one(fresh: dict[str, Any]) -> None:
    """The gateway's answer fails (an error status, or no answer at all): each page says so in its
    status line instead of dying in an uncaught exception with nothing on screen."""
    pg = fresh["page"]
    down = orjson.dumps({"error": {"message": "Log database unavailable, retry later.", "type": "server_error"}})
    for fault, shown in (
        (lambda route: route.fulfill(status=503, body=down, content_type="application/json"),
         "Log database unavailable, retry later."),
        (lambda route: route.abort(), "The gateway could not be reached"),
    ):
        pg.route("**/admin/api/**", fault)
        for name in PAGES:
            pg.goto(f"/admin/{name}")
            sync_api.expect(pg.locator("#flash")).to_contain_text(shown)
        pg.unroute("**/admin/api/**")
    assert fresh["pageerror"] == []


def test_an_ended_session_is_reported_where_the_operator_acts(fresh: dict[str, Any]) -> None:
    pg = fresh["page"]
    fresh["ctx"].clear_cookies()  # signed out elsewhere, or the session expired, with the page still open
    pg.click("#filters button[type=submit]")
    sync_api.expect(pg.locator("#flash")).to_have_text("Admin token required.")
    assert fresh["pageerror"] == []


def test_policy_buttons_without_an_open_policy_ask_for_one(fresh: dict[str, Any]) -> None:
    pg = fresh["page"]
    pg.goto("/admin/policies")
    for button in ("#btn-validate", "#btn-evaluate", "#btn-activate", "#btn-rollback", "#btn-retire",
                   "#diff-form button"):
        pg.evaluate("() => { document.querySelector('#flash').textContent = ''; }")
        pg.click(button)
        sync_api.expect(pg.locator("#flash")).to_contain_text("Open a policy", timeout=5_000)
    assert fresh["pageerror"] == []


def test_a_key_budget_without_a_period_shows_the_period_it_is_enforced_over(
    env: dict[str, Any], fresh: dict[str, Any]
) -> None:
    with httpx.Client(base_url=env["gw"].base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        key = admin.post("/admin/api/keys", json={"name": "no-period", "budget_usd": 5}).json()
    pg = fresh["page"]
    pg.goto("/admin/keys")
    row = pg.locator(f"tr[data-key='{key['id']}']")
    row.wait_for()
    assert "5 / month" in row.inner_text()  # a key budget's period defaults to a month, not "total"


def test_the_keys_page_shows_each_keys_expiry_and_sets_one(env: dict[str, Any], fresh: dict[str, Any]) -> None:
    with httpx.Client(base_url=env["gw"].base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        lapsed = admin.post("/admin/api/keys", json={"name": "lapsed-demo", "expires_in_s": 1}).json()
    when = datetime.fromisoformat(lapsed["expires_at"])
    wait_until(lambda: datetime.now(UTC) > when, what="the demo key's expiry")
    pg = fresh["page"]
    pg.goto("/admin/keys")
    row = pg.locator(f"tr[data-key='{lapsed['id']}']")
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[-2] == "expired" and cells[-3] == f"{lapsed['expires_at'][:19].replace('T', ' ')} UTC", cells
    assert row.locator("button", has_text="Revoke").count() == 1  # an expired key can still be revoked

    pg.fill("#key-form input[name=name]", "contractor-until-2099")
    pg.fill("#key-form input[name=expires_at]", "2099-01-31T18:00")
    pg.click("#key-form button")
    made = pg.locator("#keys tr", has_text="contractor-until-2099")
    made.wait_for()
    utc = pg.evaluate("() => new Date('2099-01-31T18:00').toISOString()")  # the browser's local time, in UTC
    cells = made.locator("td").all_inner_texts()
    assert cells[-2] == "active" and cells[-3] == f"{utc[:19].replace('T', ' ')} UTC", cells
    assert fresh["pageerror"] == []


def _page_width(pg: Any) -> tuple[int, int]:
    w = pg.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    return w[0], w[1]


def test_a_new_policy_name_is_checked_in_the_browser_without_a_script_error(fresh: dict[str, Any]) -> None:
    """The name field's pattern compiles (Chromium compiles `pattern` with the `v` flag, where an
    unescaped `-` in a class is an error that silently turns the check off)."""
    pg = fresh["page"]
    pg.goto("/admin/policies")
    pg.fill("#new-policy input[name=name]", "bad name!")
    pg.click("#new-policy button")
    assert pg.evaluate("() => document.querySelector('#new-policy input[name=name]').validity.patternMismatch")
    assert pg.locator("#policy-title").inner_text() == "Select a policy"
    pg.fill("#new-policy input[name=name]", "team:ok_name-1.2")  # every character a policy name may have
    pg.click("#new-policy button")
    sync_api.expect(pg.locator("#policy-title")).to_have_text("team:ok_name-1.2")
    assert (fresh["pageerror"], fresh["console"]) == ([], [])


def test_a_logged_request_opens_from_the_keyboard_into_view_and_an_empty_log_says_so(
    fresh: dict[str, Any],
) -> None:
    pg = fresh["page"]
    pg.goto("/admin/requests")
    pg.select_option("#log-filters select[name=range]", "7d")
    pg.click("#log-filters button")
    last = pg.locator("#log tbody tr").last
    sync_api.expect(pg.locator("#log tbody tr")).to_have_count(50)
    last.focus()  # Tab reaches a row; Enter opens it, and the detail (below the page of rows) is scrolled to
    pg.keyboard.press("Enter")
    pg.locator("#detail").wait_for()
    top = pg.evaluate("() => document.querySelector('#request-detail').getBoundingClientRect().top")
    assert 0 <= top < pg.viewport_size["height"], top
    pg.fill("#log-filters input[name=model]", "no-such-model")
    pg.click("#log-filters button")
    sync_api.expect(pg.locator("#log-table .empty")).to_have_text("No requests match these filters in this range.")
    assert pg.locator("#request-detail").is_hidden()  # the detail of a row no longer listed goes away
    assert (fresh["pageerror"], fresh["console"]) == ([], [])


def test_an_empty_dashboard_says_it_has_no_data(fresh: dict[str, Any]) -> None:
    pg = fresh["page"]
    pg.fill("#filters input[name=policy]", "no-such-policy")
    pg.click("#filters button")
    sync_api.expect(pg.locator("#dash-cost-quality .empty")).to_have_text("No data for this range and these filters.")
    assert pg.locator("#dash-cost-quality").get_attribute("data-rows") == "0"


def test_a_narrow_window_and_long_values_keep_every_control_on_screen(fresh: dict[str, Any]) -> None:
    """At 800 px the wide tables (request log, keys) scroll in their own box; a 128-character policy
    name wraps: the page never grows wider than the window, so no button ends up off screen."""
    pg = fresh["page"]
    pg.set_viewport_size({"width": 800, "height": 900})
    for name, ready in (("requests", "#log tbody tr"), ("keys", "#keys tbody tr"), ("deployments", "#deployments")):
        pg.goto(f"/admin/{name}")
        pg.locator(ready).first.wait_for()
        assert _page_width(pg) == (800, 800), name
    pg.goto("/admin/policies")
    long = "n" * 128
    pg.fill("#new-policy input[name=name]", long)
    pg.click("#new-policy button")
    sync_api.expect(pg.locator("#policy-title")).to_have_text(long)
    assert _page_width(pg) == (800, 800)
    box = pg.locator("#btn-retire").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 800
    _shot(pg, "narrow-long-policy")


def test_revoking_a_key_asks_first(env: dict[str, Any], fresh: dict[str, Any]) -> None:
    with httpx.Client(base_url=env["gw"].base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        key = admin.post("/admin/api/keys", json={"name": "revoke-asks"}).json()
    pg = fresh["page"]
    pg.goto("/admin/keys")
    row = pg.locator(f"tr[data-key='{key['id']}']")
    asked: list[str] = []
    pg.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    row.locator("button", has_text="Revoke").click()
    assert asked and "Revoke key revoke-asks" in asked[0]
    pg.wait_for_timeout(300)
    assert row.locator("td").all_inner_texts()[-2] == "active"  # cancelled: nothing changed
    pg.once("dialog", lambda d: d.accept())
    row.locator("button", has_text="Revoke").click()
    sync_api.expect(row.locator("td").nth(-2)).to_have_text("revoked")


def test_a_request_shows_its_api_streaming_and_error_and_a_good_query_clears_an_old_error(
    env: dict[str, Any], fresh: dict[str, Any]
) -> None:
    gw = env["gw"]
    with httpx.Client(base_url=gw.base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        key = admin.post("/admin/api/keys", json={"name": "wire-formats"}).json()
    with httpx.Client(base_url=gw.base_url, headers={"authorization": f"Bearer {key['key']}"}, timeout=30) as c:
        failed = c.post("/v1/messages", json={"model": "fake-model", "max_tokens": 16, "stream": True,
                                              "messages": [{"role": "user", "content": "hi [[fault:500]]"}]})
        answered = c.post("/v1/responses", json={"model": "fake-model", "input": "hello"})
    assert (failed.status_code, answered.status_code) == (502, 200)
    gw.call(gw.services.sink.flush())
    pg = fresh["page"]
    pg.goto("/admin/requests")
    pg.fill("#log-filters input[name=since]", "2030-01-02T00:00")
    pg.fill("#log-filters input[name=until]", "2020-01-02T00:00")
    pg.click("#log-filters button")
    sync_api.expect(pg.locator("#flash")).to_have_text("'since' must be before 'until'.")
    pg.fill("#log-filters input[name=since]", "")
    pg.fill("#log-filters input[name=until]", "")
    pg.fill("#log-filters input[name=key]", key["id"])
    pg.click("#log-filters button")
    sync_api.expect(pg.locator("#log tbody tr")).to_have_count(2)
    assert pg.locator("#flash").inner_text() == ""  # the error of the query before no longer holds

    def detail(rid: str) -> dict[str, str]:
        pg.locator("#log tbody tr", has_text=rid).click()
        sync_api.expect(pg.locator("#request-detail h3")).to_have_text(f"Request {rid}")
        return dict(tuple(tr.locator("td").all_inner_texts()) for tr in pg.locator("#detail tbody tr").all())

    shown = detail(failed.headers["x-request-id"])
    assert (shown["endpoint"], shown["streamed"], shown["status"]) == ("messages", "true", "error"), shown
    assert "provider had an error" in shown["error_message"], shown
    shown = detail(answered.headers["x-request-id"])
    assert (shown["endpoint"], shown["streamed"], shown["status"]) == ("responses", "false", "ok"), shown

    # "Older" pages on with the filters of the rows shown, not with a field edited but not applied
    pg.fill("#log-filters input[name=key]", "")
    pg.select_option("#log-filters select[name=range]", "7d")
    pg.fill("#log-filters input[name=policy]", "bandit-demo")
    pg.click("#log-filters button")
    sync_api.expect(pg.locator("#log tbody tr")).to_have_count(50)
    pg.fill("#log-filters input[name=policy]", "cheap-demo")
    pg.click("#log-more")
    sync_api.expect(pg.locator("#log tbody tr")).to_have_count(100)
    policies = pg.eval_on_selector_all("#log tbody tr", "trs => trs.map((tr) => tr.children[5].textContent)")
    assert set(policies) == {"bandit-demo"}, set(policies)
    assert fresh["pageerror"] == []


def test_a_policy_check_that_fails_for_another_reason_says_why_not_invalid(fresh: dict[str, Any]) -> None:
    pg = fresh["page"]
    pg.goto("/admin/policies")
    pg.fill("#new-policy input[name=name]", "too-big")
    pg.click("#new-policy button")
    pg.evaluate("() => { const t = document.querySelector('#policy-yaml'); t.value += '# ' + 'x'.repeat(300000); }")
    pg.click("#btn-validate")
    sync_api.expect(pg.locator("#flash")).to_have_text("Request body too large: the limit is 262144 bytes.")
    assert pg.locator("#policy-errors li").count() == 0  # nothing in the text is marked wrong
    assert fresh["pageerror"] == []


def test_a_long_name_leaves_its_chart_room_to_draw(env: dict[str, Any], fresh: dict[str, Any]) -> None:
    """A 300-character user name is cut short as the chart's label (the table keeps it whole): drawn
    whole, the label took the canvas and left the bars no room at all."""
    gw, user = env["gw"], "ü-" + "long-user-name-" * 20
    with httpx.Client(base_url=gw.base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        key = admin.post("/admin/api/keys", json={"name": "long-user", "user": user}).json()
    r = httpx.post(f"{gw.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {key['key']}"},
                   json={"model": "fake-cheap", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 200, r.text
    gw.call(gw.services.sink.flush())
    pg = fresh["page"]
    pg.fill("#filters input[name=user]", user)
    pg.evaluate("() => document.body.removeAttribute('data-loaded')")
    pg.click("#filters button")
    pg.wait_for_selector("body[data-loaded='1']")
    area = pg.evaluate("() => Chart.getChart(document.querySelector('#dash-spend-by-user canvas')).chartArea")
    assert area["right"] - area["left"] > 200 and area["bottom"] - area["top"] > 80, area
    assert pg.locator("#dash-spend-by-user tbody td").first.inner_text() == user
    assert fresh["pageerror"] == []


def test_a_log_database_outage_is_named_on_every_page_and_breakers_stay_listed(
    browser: Any, tmp_path: Path
) -> None:
    """The log database is down: each page says so at the top; the dashboards ask once, not once per
    dashboard (on a database that hangs, each would wait out the timeout in turn); the deployments page
    still lists every breaker, which needs no database."""
    down = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone"
    with FakeProviderThread() as fp, running_gateway(console_settings(fp.base_url, down, tmp_path)) as gw:
        ctx = browser.new_context(base_url=gw.base_url)
        ctx.set_default_timeout(10_000)
        pg = ctx.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        asked: list[str] = []
        pg.on("request", lambda r: asked.append(r.url) if "/console/dashboards/" in r.url else None)
        pg.goto("/admin/login")
        pg.fill("#token", ADMIN_TOKEN)
        pg.click("button[type=submit]")
        pg.wait_for_selector("body[data-loaded='1']")
        sync_api.expect(pg.locator("#flash")).to_contain_text("Log database unavailable, retry later")
        assert len(asked) == 1, asked
        for sec in pg.locator("section.dash").all():
            assert "Log database unavailable" in sec.inner_text()
        pg.goto("/admin/deployments")
        sync_api.expect(pg.locator("tr[data-deployment='fake-c'] .state")).to_have_text("closed")
        sync_api.expect(pg.locator("#flash")).to_contain_text("latency are not shown")
        for name in ("policies", "keys", "requests"):
            pg.goto(f"/admin/{name}")
            sync_api.expect(pg.locator("#flash")).to_contain_text("Log database unavailable, retry later")
        assert errors == []
        ctx.close()


def test_a_key_that_fails_to_be_created_takes_the_last_keys_secret_off_screen(fresh: dict[str, Any]) -> None:
    pg = fresh["page"]
    pg.goto("/admin/keys")
    pg.fill("#key-form input[name=name]", "first-secret")
    pg.click("#key-form button")
    sync_api.expect(pg.locator("#new-key-secret")).to_contain_text("hg-")
    pg.fill("#key-form input[name=name]", "n" * 129)  # one character too long: refused
    pg.click("#key-form button")
    sync_api.expect(pg.locator("#flash")).to_contain_text("Invalid value for 'name'")
    assert pg.locator("#new-key").is_hidden() and pg.locator("#new-key-secret").inner_text() == ""
    assert fresh["pageerror"] == []


def test_the_deployments_page_waits_for_one_refresh_before_it_asks_again(fresh: dict[str, Any]) -> None:
    """On a database that hangs each refresh waits out the timeout: an open page asks again only once the
    last answer came, instead of piling up requests that hold the connections traffic needs."""
    pg = fresh["page"]
    asked: list[str] = []
    pg.on("request", lambda r: asked.append(r.url) if r.url.endswith("/api/console/deployments") else None)
    held: list[Any] = []
    pg.route("**/admin/api/console/deployments", lambda route: held.append(route))  # answered when released

    def settle(count: int, tries: int = 100) -> None:  # the page's events arrive while the test calls in
        for _ in range(tries):
            if len(asked) >= count:
                break
            pg.wait_for_timeout(20)

    pg.clock.install()
    pg.goto("/admin/deployments")
    settle(1)
    pg.clock.run_for(10_000)  # three refresh ticks while the first refresh is unanswered
    settle(2, tries=15)
    assert len(asked) == 1, asked
    held[0].continue_()
    pg.unroute("**/admin/api/console/deployments")
    pg.locator("tr[data-deployment='fake-a']").wait_for()
    pg.clock.run_for(3_000)  # answered: the next tick asks again
    settle(2)
    assert len(asked) == 2, asked
    assert fresh["pageerror"] == []


def test_an_inverted_range_is_said_once_at_the_top_of_the_dashboards(fresh: dict[str, Any]) -> None:
    """The filters' 400 is the same for every dashboard: asked once, shown once at the top, not in each panel."""
    pg = fresh["page"]
    asked: list[str] = []
    pg.on("request", lambda r: asked.append(r.url) if "/console/dashboards/" in r.url else None)
    pg.fill("#filters input[name=since]", "2026-05-02T00:00")
    pg.fill("#filters input[name=until]", "2026-05-01T00:00")
    pg.click("#filters button")
    sync_api.expect(pg.locator("#flash")).to_contain_text("'since' must be before 'until'")
    assert len(asked) == 1, asked
    for sec in pg.locator("section.dash").all():
        assert "must be before" not in sec.inner_text()
    assert fresh["pageerror"] == []


def test_removing_a_budget_asks_first(env: dict[str, Any], page: Any) -> None:
    with httpx.Client(base_url=env["gw"].base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        assert admin.put("/admin/api/budgets/team:confirm-me", json={"limit_usd": 3}).status_code == 200

        def scopes() -> list[str]:
            return [b["scope"] for b in admin.get("/admin/api/budgets").json()["data"]]

        page.goto("/admin/budgets")
        row = page.locator("tr[data-scope='team:confirm-me']")
        asked: list[str] = []
        answer = functools.partial(answer_dialog, asked)

        page.once("dialog", answer(False))  # cancelled: the budget stays
        row.locator("button", has_text="Remove").click()
        assert len(asked) == 1 and "team:confirm-me" in asked[0], asked
        assert "team:confirm-me" in scopes() and row.is_visible()
        page.once("dialog", answer(True))
        row.locator("button", has_text="Remove").click()
        row.wait_for(state="detached")
        assert len(asked) == 2 and "team:confirm-me" not in scopes()


def test_the_keys_page_draws_a_page_of_keys_at_a_time(env: dict[str, Any], page: Any) -> None:
    """Newest first, 100 rows at a time ("More keys" for the next): a few thousand at once took seconds."""
    with httpx.Client(base_url=env["gw"].base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        total = len(admin.get("/admin/api/keys").json()["data"])
        made = [admin.post("/admin/api/keys", json={"name": f"many-{i}"}).json()["id"] for i in range(max(5, 105 - total))]
        total += len(made)
    page.goto("/admin/keys")
    rows = page.locator("#keys tbody tr")
    sync_api.expect(rows).to_have_count(100)
    assert rows.first.get_attribute("data-key") == made[-1] and page.locator("#keys-more").is_visible()
    page.click("#keys-more")
    sync_api.expect(rows).to_have_count(total)
    assert page.locator("#keys-more").is_hidden()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"tr[data-key='{made[0]}'] button", has_text="Revoke").click()  # redrawn in place
    sync_api.expect(page.locator(f"tr[data-key='{made[0]}'] td").nth(11)).to_have_text("revoked")
    assert rows.count() == total
