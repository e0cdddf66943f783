"""User and team budgets set through the admin API: validated, listed with their spend, enforced at
once by the process that took the change and within the reload interval by every other one."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from backends.fake_provider import FakeProviderThread
from tests.support.gateway import MSG, dep, sdk, settings
from tests.support.harness import running_gateway
from tests.support.wait import wait_until


def _spend_until_cut(gw: object, key: str, user: str | None = None, tries: int = 12) -> list[int]:
    codes = []
    for _ in range(tries):
        try:
            sdk(gw, key).chat.completions.create(model="m", messages=MSG, max_tokens=10,
                                                 **({"user": user} if user else {}))
            codes.append(200)
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "budget_exceeded"  # type: ignore[index]
            codes.append(429)
    return codes


def test_team_budget_set_at_run_time_cuts_off_in_every_process(sqlite_url: str, tmp_path: Path) -> None:
    with FakeProviderThread() as fp:
        pricey = dep("a", "m", fp.base_url, pricing={"input_per_mtok": 1e6, "output_per_mtok": 1e6})  # 1 USD/token
        s = settings(tmp_path, sqlite_url, [pricey], require_keys=True,
                     budgets=[{"scope": "user:carol", "limit_usd": 1000, "period": "day"}])
        with running_gateway(s) as g1, running_gateway(s) as g2:
            admin = g1.base_url + "/admin/api/budgets"
            key = httpx.post(g1.base_url + "/admin/api/keys", json={"name": "t", "team": "ml"}).json()["key"]
            assert _spend_until_cut(g1, key, tries=2) == [200, 200]  # no team budget yet

            r = httpx.put(admin + "/team:ml", json={"limit_usd": 60, "period": "day"})
            assert r.status_code == 200 and r.json()["source"] == "admin"
            codes = _spend_until_cut(g1, key)
            assert 200 in codes and codes[-1] == 429  # this process: at once

            wait_until(lambda: "team:ml" in g2.services.router.scope_budgets, 5, what="g2 never saw the budget")
            listed = {b["scope"]: b for b in httpx.get(admin).json()["data"]}
            assert listed["team:ml"]["limit_usd"] == 60 and listed["team:ml"]["spent_usd"] > 0
            assert listed["user:carol"]["source"] == "config"

            # a week-long budget is a new account; raising it lets the team spend again
            assert httpx.put(admin + "/team:ml", json={"limit_usd": 10_000, "period": "week"}).status_code == 200
            assert _spend_until_cut(g1, key, tries=1) == [200]
            assert httpx.delete(admin + "/team:ml").json() == {"scope": "team:ml", "deleted": True}
            assert "team:ml" not in g1.services.router.scope_budgets


def test_budget_admin_rejects_bad_scopes_and_bodies_in_openai_error_shape(sqlite_url: str, tmp_path: Path) -> None:
    s = settings(tmp_path, sqlite_url, [], budgets=[{"scope": "team:cfg", "limit_usd": 5}])
    with running_gateway(s) as gw:
        admin = gw.base_url + "/admin/api/budgets"
        cases = [
            (httpx.put(admin + "/org:x", json={"limit_usd": 1}), 400, "invalid_scope"),
            (httpx.put(admin + "/team:x", json={"limit_usd": -1}), 400, None),
            (httpx.put(admin + "/team:x", json={"limit_usd": 1, "period": "year"}), 400, None),
            (httpx.put(admin + "/team:x", json={"limit_usd": 1, "extra": 1}), 400, None),
            (httpx.put(admin + "/team:x", json={"limit_usd": True}), 400, "invalid_value"),  # not 1 USD
            (httpx.put(admin + "/team:x", json={"limit_usd": "5"}), 400, "invalid_value"),
            (httpx.put(admin + "/team:a%00b", json={"limit_usd": 1}), 400, "invalid_value"),  # Postgres refuses NUL
            (httpx.put(admin + "/team:x", content=b"{nope", headers={"content-type": "application/json"}), 400, None),
            (httpx.delete(admin + "/team:cfg"), 409, "budget_in_config"),
            (httpx.delete(admin + "/team:none"), 404, "budget_not_found"),
        ]
        for r, status, code in cases:
            assert r.status_code == status, r.text
            err = r.json()["error"]
            assert err["message"] and err["type"]
            if code:
                assert err["code"] == code
        assert [b["scope"] for b in httpx.get(admin).json()["data"]] == ["team:cfg"]



def _team_spent(gw: object, scope: str) -> float:
    listed = {b["scope"]: b for b in httpx.get(gw.base_url + "/admin/api/budgets").json()["data"]}  # type: ignore[attr-defined]
    return float(listed[scope]["spent_usd"])


def test_a_budget_spent_before_a_restart_stays_spent_and_other_processes_catch_up(
    sqlite_url: str, tmp_path: Path
) -> None:
    """No Redis: each process counts its own spend and reads the others' from the request log."""
    with FakeProviderThread() as fp:
        pricey = dep("a", "m", fp.base_url, pricing={"input_per_mtok": 1e6, "output_per_mtok": 1e6})  # 1 USD/token
        s = settings(tmp_path, sqlite_url, [pricey], require_keys=True, budget_reconcile_s=0.2,
                     budgets=[{"scope": "team:ml", "limit_usd": 100, "period": "day"}])
        with running_gateway(s) as g1:
            key = httpx.post(g1.base_url + "/admin/api/keys", json={"name": "t", "team": "ml"}).json()["key"]
            codes = _spend_until_cut(g1, key)
            assert 200 in codes and codes[-1] == 429
            before = _team_spent(g1, "team:ml")
        with running_gateway(s) as g2, running_gateway(s) as g3:
            assert _spend_until_cut(g2, key, tries=1) == [429]  # a fresh process opens the account from the log
            assert _team_spent(g2, "team:ml") == pytest.approx(before)
            # the team gets more room; g3 spends it, and g2 learns of that from the log within a round
            assert httpx.put(g2.base_url + "/admin/api/budgets/team:ml",
                             json={"limit_usd": 1000, "period": "day"}).status_code == 200
            wait_until(lambda: g3.services.router.scope_budgets["team:ml"].limit_usd == 1000, 5, what="g3 never saw the new limit")
            assert _spend_until_cut(g3, key, tries=2) == [200, 200]
            spent = _team_spent(g3, "team:ml")
            assert spent > before
            wait_until(lambda: _team_spent(g2, "team:ml") >= spent - 1e-9, 5, what="g2 never saw g3's spend")
            assert _team_spent(g2, "team:ml") == pytest.approx(spent)  # counted once, not twice
