"""The admin API as an operator's script uses it, on real Postgres: a malformed body is a 400 naming the
field (an invalid policy, a 422) and changes nothing; text Postgres cannot store is refused the same way
instead of failing inside the database driver; a valid policy that names nothing configured says so."""

from __future__ import annotations

import random
import string
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.console import ADMIN_TOKEN, console_gateway
from tests.support.harness import GatewayThread

YAML = {"content-type": "application/yaml"}


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayThread, httpx.Client]]:
    with (
        console_gateway(tmp_path_factory.mktemp("admin-api")) as (gw, _fp, _db),
        httpx.Client(base_url=gw.base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as c,
    ):
        yield gw, c


def _error(r: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["param"] == param and err["message"], err
    return err


def _chunked(body: bytes) -> Iterator[bytes]:
    yield body  # an iterator body goes out with Transfer-Encoding: chunked and no Content-Length


def test_activate_takes_only_a_version_however_the_body_is_framed(admin: tuple[GatewayThread, httpx.Client]) -> None:
    gw, c = admin
    for order in ("fake-a", "fake-b", "fake-c"):
        spec = f"name: pin\nselector: {{type: fixed, order: [{order}]}}\n"
        assert c.put("/admin/api/policies/pin", content=spec, headers=YAML).status_code == 201
    assert c.post("/admin/api/policies/pin/activate", json={"version": 1}).json()["version"] == 1

    # a misspelt field was read as "no version": a rollback nobody asked for
    _error(c.post("/admin/api/policies/pin/activate", json={"versoin": 3}), 400, "versoin")
    _error(c.post("/admin/api/policies/pin/activate", json={"version": True}), 400, "version")
    _error(c.post("/admin/api/policies/pin/activate", json={"version": "3"}), 400, "version")
    assert gw.services.router.registry.active_version("pin") == 1

    # a chunked body (no Content-Length) was ignored: the same rollback
    r = c.post("/admin/api/policies/pin/activate", content=_chunked(b'{"version": 3}'),
               headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["version"] == 3, r.text
    r = c.post("/admin/api/policies/pin/activate", content=_chunked(b""))
    assert r.status_code == 200 and r.json()["version"] == 2  # an empty body still rolls back
    err = _error(c.post("/admin/api/policies/pin/activate", json={"version": 9}), 404, "version")
    assert err["code"] == "policy_not_found" and "pin@9" in err["message"]


def test_forcing_a_breaker_needs_its_mode(admin: tuple[GatewayThread, httpx.Client]) -> None:
    _, c = admin
    assert c.post("/admin/api/breakers/fake-c", json={"mode": "open"}).json()["state"] == "open"
    # a misspelt field read as mode null: the forced state was silently handed back to automatic
    _error(c.post("/admin/api/breakers/fake-c", json={"mod": "closed"}), 400, "mode")
    _error(c.post("/admin/api/breakers/fake-c", json={}), 400, "mode")
    _error(c.post("/admin/api/breakers/fake-c", json={"mode": "half"}), 400, "mode")
    assert {b["deployment"]: b["state"] for b in c.get("/admin/api/breakers").json()["data"]}["fake-c"] == "open"
    assert c.post("/admin/api/breakers/fake-c", json={"mode": None}).json()["state"] == "closed"


def test_a_forced_breaker_is_listed_as_forced(admin: tuple[GatewayThread, httpx.Client]) -> None:
    """The breaker listing and the console's deployments page tell a breaker an operator forced (and which
    way) from one the traffic opened or closed: both read the same otherwise."""
    _, c = admin

    def listed() -> dict[str, tuple[str, str | None]]:
        breakers = {b["deployment"]: (b["state"], b["forced"]) for b in c.get("/admin/api/breakers").json()["data"]}
        page = {d["deployment"]: (d["state"], d["forced"])
                for d in c.get("/admin/api/console/deployments").json()["data"]}
        assert breakers == page
        return breakers

    assert c.post("/admin/api/breakers/fake-a", json={"mode": "open"}).json() == {
        "deployment": "fake-a", "state": "open", "forced": "open"}
    assert c.post("/admin/api/breakers/fake-b", json={"mode": "closed"}).json()["forced"] == "closed"
    try:
        got = listed()
        assert (got["fake-a"], got["fake-b"], got["fake-c"][1]) == (("open", "open"), ("closed", "closed"), None)
    finally:
        for name in ("fake-a", "fake-b"):
            assert c.post(f"/admin/api/breakers/{name}", json={"mode": None}).json()["forced"] is None
    got = listed()
    assert (got["fake-a"], got["fake-b"]) == (("closed", None), ("closed", None))


def test_artifact_activation_names_an_unknown_field(admin: tuple[GatewayThread, httpx.Client]) -> None:
    _, c = admin
    # "scorer_name" was ignored: a valid path would have replaced the default scorer
    _error(c.post("/admin/api/router/artifacts", json={"path": "clf", "scorer_name": "math"}), 400, "scorer_name")
    _error(c.post("/admin/api/router/artifacts", json={"path": "clf", "aliases": {"a": 1}}), 400, "aliases.a")
    _error(c.post("/admin/api/router/verifiers", json={"path": 5}), 400, "path")


def test_key_limits_are_strict_and_an_empty_patch_changes_nothing(admin: tuple[GatewayThread, httpx.Client]) -> None:
    _, c = admin
    before = c.get("/admin/api/keys").json()["data"]
    for body, param in (({"name": "k", "budget_usd": "10"}, "budget_usd"),
                        ({"name": "k", "rpm_limit": True}, "rpm_limit"),
                        ({"name": "k", "max_concurrency": 2.0}, "max_concurrency")):
        _error(c.post("/admin/api/keys", json=body), 400, param)
    assert c.get("/admin/api/keys").json()["data"] == before

    key = c.post("/admin/api/keys", json={"name": "patched", "rpm_limit": 5}).json()
    r = c.patch(f"/admin/api/keys/{key['id']}", json={})
    assert r.status_code == 200 and r.json()["rpm_limit"] == 5, r.text
    assert c.patch("/admin/api/keys/no-such-key", json={}).status_code == 404


def test_text_postgres_cannot_store_is_a_400_naming_the_field(admin: tuple[GatewayThread, httpx.Client]) -> None:
    _, c = admin
    keys_before = c.get("/admin/api/keys").json()["data"]
    cases = [
        (c.post("/admin/api/keys", json={"name": "a\x00b"}), "name"),
        (c.post("/admin/api/keys", json={"name": "k", "metadata": {"team": "x\x00"}}), "metadata.team"),
        (c.post("/admin/api/keys", json={"name": "k", "allowed_models": ["fake-model", "\x00"]}),
         "allowed_models[1]"),
        (c.patch("/admin/api/keys/a%00b", json={"rpm_limit": 5}), "key_id"),
        (c.delete("/admin/api/keys/a%00b"), "key_id"),
        (c.put("/admin/api/budgets/team:a%00b", json={"limit_usd": 1}), "scope"),
        (c.put("/admin/api/policies/nul", json={"spec_yaml": "name: nul\n", "comment": "a\x00"}), "comment"),
        (c.get("/admin/api/console/requests", params={"user": "a\x00b"}), "user"),
        (c.get("/admin/api/console/requests/a%00b"), "request_id"),
        (c.get("/admin/api/console/dashboards/spend-by-key", params={"team": "\x00"}), "team"),
    ]
    for r, param in cases:
        assert _error(r, 400, param)["code"] == "invalid_value"
    assert c.get("/admin/api/keys").json()["data"] == keys_before
    assert "nul" not in [p["name"] for p in c.get("/admin/api/policies").json()["data"]]
    assert c.get("/admin/api/budgets").json()["data"] == []


def test_a_control_character_in_an_admin_path_is_a_400_never_another_name(
    admin: tuple[GatewayThread, httpx.Client],
) -> None:
    """A route pattern's `$` also matches before a final newline: without the check, `/keys/<id>%0A`
    revoked key <id> and `/policies/x%0A` wrote policy x."""
    _, c = admin
    key = c.post("/admin/api/keys", json={"name": "newline-target"}).json()
    keys_before = c.get("/admin/api/keys").json()["data"]
    cases = [
        (c.delete(f"/admin/api/keys/{key['id']}%0A"), "key_id"),
        (c.patch(f"/admin/api/keys/{key['id']}%0A", json={"rpm_limit": 5}), "key_id"),
        (c.patch(f"/admin/api/keys/a%09{key['id']}", json={"rpm_limit": 5}), "key_id"),
        (c.put("/admin/api/policies/newline-pol%0A", content="selector: {type: fixed}\n", headers=YAML), "name"),
    ]
    for r, param in cases:
        assert _error(r, 400, param)["code"] == "invalid_value"
    assert c.get("/admin/api/keys").json()["data"] == keys_before
    assert "newline-pol" not in [p["name"] for p in c.get("/admin/api/policies").json()["data"]]


def test_a_policy_name_too_long_for_the_index_is_a_422(admin: tuple[GatewayThread, httpx.Client]) -> None:
    _, c = admin
    rng = random.Random(1)  # incompressible: Postgres refuses the index entry (a repeated letter compresses)
    name = "".join(rng.choice(string.ascii_letters) for _ in range(9000))
    r = c.put(f"/admin/api/policies/{name}", content="selector: {type: fixed}\n", headers=YAML)
    assert _error(r, 422, "name")["code"] == "invalid_policy"


def test_a_policy_that_names_nothing_configured_is_stored_with_a_warning(
    admin: tuple[GatewayThread, httpx.Client],
) -> None:
    _, c = admin
    spec = "name: ghostly\nselector: {type: fixed, order: [ghost, 'tag:nope', fake-a]}\n"
    checked = c.post("/admin/api/policies/ghostly/validate", content=spec, headers=YAML).json()
    assert checked == {"valid": True, "warnings": ["no configured deployment, model or tag matches: ghost, tag:nope"]}
    stored = c.put("/admin/api/policies/ghostly", content=spec, headers=YAML)
    assert stored.status_code == 201 and stored.json()["warnings"] == checked["warnings"]
    shadow = c.put("/admin/api/policies/fake-model", content="selector: {type: fixed}\n", headers=YAML).json()
    assert shadow["warnings"] == ["'fake-model' is also a configured model: its requests follow this policy"]
    clean = c.put("/admin/api/policies/plain", content="selector: {type: fixed}\n", headers=YAML).json()
    assert clean["warnings"] == []


def test_a_json_policy_body_names_a_misspelt_or_mistyped_field(admin: tuple[GatewayThread, httpx.Client]) -> None:
    _, c = admin
    spec = "name: commented\nselector: {type: fixed}\n"
    _error(c.put("/admin/api/policies/commented", json={"spec_yaml": spec, "commnet": "why"}), 400, "commnet")
    _error(c.put("/admin/api/policies/commented", json={"spec_yaml": spec, "comment": 5}), 400, "comment")
    assert "commented" not in [p["name"] for p in c.get("/admin/api/policies").json()["data"]]
    r = c.put("/admin/api/policies/commented", json={"spec_yaml": spec, "comment": "why"})
    assert r.status_code == 201 and r.json()["comment"] == "why"


def test_a_policy_that_repeats_a_key_is_refused_naming_the_key_and_its_line(
    admin: tuple[GatewayThread, httpx.Client],
) -> None:
    """YAML keeps the last of a repeated key: the first `selector` would be dropped without a word."""
    _, c = admin
    spec = "name: twice\nselector: {type: fixed, order: [fake-a]}\nrules: []\nselector: {type: cheapest}\n"
    for r in (c.put("/admin/api/policies/twice", content=spec, headers=YAML),
              c.post("/admin/api/policies/twice/validate", content=spec, headers=YAML)):
        err = _error(r, 422, "selector")
        assert err["code"] == "invalid_policy"
        assert err["message"] == "Invalid policy: selector: duplicate key 'selector' (first on line 2) (line 4)"
    assert "twice" not in [p["name"] for p in c.get("/admin/api/policies").json()["data"]]


def test_a_policy_error_without_a_field_has_no_empty_param(admin: tuple[GatewayThread, httpx.Client]) -> None:
    _, c = admin
    err = _error(c.put("/admin/api/policies/broken", content="::: : [\n", headers=YAML), 422, None)
    assert err["message"].startswith("Invalid policy: YAML syntax:") and err["details"][0]["line"] == 1



def test_a_large_policy_is_parsed_while_the_gateway_keeps_answering(
    admin: tuple[GatewayThread, httpx.Client],
) -> None:
    """A policy of a few thousand rules parses for most of a second; it is parsed off the event loop, so a
    request that arrives meanwhile is answered in a fraction of that (on the loop, it waited it out)."""
    gw, c = admin
    rules = "\n".join(f"  - {{name: r{i}, when: {{teams: [t{i}]}}, then: {{forbid: [d{i}]}}}}" for i in range(3500))
    done: dict[str, float] = {}

    def put() -> None:
        r = c.put("/admin/api/policies/big-one", content=f"name: big-one\nrules:\n{rules}\n", headers=YAML)
        done["put"] = time.monotonic()
        assert r.status_code == 201, r.text

    t0 = time.monotonic()
    worker = threading.Thread(target=put)
    worker.start()
    time.sleep(0.15)
    asked = time.monotonic()
    assert httpx.get(gw.base_url + "/healthz", timeout=30).status_code == 200
    waited = time.monotonic() - asked
    worker.join()
    assert "put" in done and waited < (done["put"] - t0) / 2, (waited, done["put"] - t0)


def test_a_team_whose_name_holds_a_slash_gets_a_budget_set_and_removed(admin: tuple[GatewayThread, httpx.Client]) -> None:
    """A key's team may be "ml/research"; its budget's scope, escaped in the URL, names it too."""
    gw, c = admin
    r = c.put("/admin/api/budgets/team:ml%2Fresearch", json={"limit_usd": 7, "period": "day"})
    assert r.status_code == 200 and r.json()["scope"] == "team:ml/research", r.text
    assert gw.services.router.scope_budgets["team:ml/research"].limit_usd == 7
    assert [b["scope"] for b in c.get("/admin/api/budgets").json()["data"]] == ["team:ml/research"]
    assert c.delete("/admin/api/budgets/team:ml%2Fresearch").json() == {"scope": "team:ml/research", "deleted": True}
    assert c.get("/admin/api/budgets").json()["data"] == []
    _error(c.put("/admin/api/budgets/team:" + "x" * 513, json={"limit_usd": 1}), 400, "scope")


def test_budget_scopes_take_the_names_keys_take_and_no_control_characters(
    admin: tuple[GatewayThread, httpx.Client],
) -> None:
    """A key's team or user may hold spaces (and any script): a budget can be set for it. A control character
    (a newline at the end, a tab, an escape sequence) is refused in both, and so is a name longer than a
    request's `user` may be."""
    _, c = admin
    key = c.post("/admin/api/keys", json={"name": "spaced", "team": "research lab", "user": "Ana María"})
    assert key.status_code == 201, key.text
    scopes = ["team:research lab", "user:Ana María", "team:" + "t" * 512]
    for scope in scopes:
        r = c.put(f"/admin/api/budgets/{quote(scope)}", json={"limit_usd": 5})
        assert r.status_code == 200 and r.json()["scope"] == scope, r.text
    assert sorted(b["scope"] for b in c.get("/admin/api/budgets").json()["data"]) == sorted(scopes)
    for raw in ("team:x%0A", "team:x%0D", "team:a%09b", "user:%1B%5B31m", "team:x%7F", "team:%C2%85x"):
        assert _error(c.put(f"/admin/api/budgets/{raw}", json={"limit_usd": 5}), 400, "scope")["code"] == "invalid_value"
    for raw in ("team:" + "t" * 513, "team:", "org:x"):
        assert _error(c.put(f"/admin/api/budgets/{raw}", json={"limit_usd": 5}), 400, "scope")["code"] == "invalid_scope"
    for field, value in (("team", "a\nb"), ("team", "lab\n"), ("user", "x\x1b[0m"), ("team", "t" * 513)):
        _error(c.post("/admin/api/keys", json={"name": "bad-name", field: value}), 400, field)
        _error(c.patch(f"/admin/api/keys/{key.json()['id']}", json={field: value}), 400, field)
    assert "bad-name" not in [k["name"] for k in c.get("/admin/api/keys").json()["data"]]
    # a final newline was dropped from the path: removing "team:research lab\n" removed "team:research lab"
    assert _error(c.delete("/admin/api/budgets/team:research%20lab%0A"), 400, "scope")["code"] == "invalid_value"
    for scope in scopes:
        assert c.delete(f"/admin/api/budgets/{quote(scope)}").json() == {"scope": scope, "deleted": True}
    assert c.get("/admin/api/budgets").json()["data"] == []


def test_key_listings_page_newest_first_and_without_a_limit_list_every_key_as_before(
    admin: tuple[GatewayThread, httpx.Client],
) -> None:
    _, c = admin
    made = [c.post("/admin/api/keys", json={"name": f"paged-{i}"}).json()["id"] for i in range(5)]
    everything = [k["id"] for k in c.get("/admin/api/keys").json()["data"]]
    assert everything[-5:] == made  # no limit: every key, oldest first, and no paging field
    assert "next_before" not in c.get("/admin/api/keys").json()
    for path in ("/admin/api/keys", "/admin/api/console/keys"):
        seen: list[str] = []
        params = {"limit": "2"}
        while True:
            page = c.get(path, params=params).json()
            assert len(page["data"]) <= 2
            seen += [k["id"] for k in page["data"]]
            if page["next_before"] is None:
                break
            params = {"limit": "2", "before": page["next_before"]}
        assert seen == everything[::-1], path  # newest first, each key once
        for bad, param in (({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "two"}, "limit"),
                           ({"limit": "-1"}, "limit"), ({"before": made[0]}, "limit"),
                           ({"limit": "2", "before": "no-such-key"}, "before")):
            _error(c.get(path, params=bad), 400, param)
