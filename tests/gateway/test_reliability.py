"""Provider failures through the real gateway: breakers, fallbacks, Retry-After, stream rules,
context-window escalation, shared breaker state, and budgets under concurrency."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa

from backends.fake_provider import FakeProviderThread
from gateway.app import breaker_config
from state.breakers import InProcessBreakerStore
from tests.support.gateway import MSG, dep, sdk, settings
from tests.support.harness import GatewayThread, running_gateway
from tests.support.redis import delete_keys
from tests.support.wait import wait_until


@pytest.fixture()
def two_providers() -> Iterator[tuple[FakeProviderThread, FakeProviderThread]]:
    with FakeProviderThread() as a, FakeProviderThread() as b:
        yield a, b



class ManualClock:
    """A monotonic clock that moves only when a test moves it (``clock.t += seconds``)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def manual_breaker_clock(gw: GatewayThread) -> ManualClock:
    """Give the gateway's breakers a clock the test moves (``clock.t += seconds``): a cooldown ends when the
    test says so, never because a loaded machine took longer than cooldown_s to send the requests."""
    clock = ManualClock()
    gw.services.router.breakers.inner = InProcessBreakerStore(breaker_config(gw.services.settings), clock=clock)
    return clock


def breaker_state(gw: GatewayThread, name: str) -> str:
    data = httpx.get(gw.base_url + "/admin/api/breakers").json()["data"]
    return next(b["state"] for b in data if b["deployment"] == name)



def test_breaker_opens_traffic_falls_back_and_half_open_probe_closes_it(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    a, b = two_providers
    s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url), dep("b", "m", b.base_url)])
    with running_gateway(s) as gw:
        clock = manual_breaker_clock(gw)
        a.set_faults("500")
        c = sdk(gw)
        served = [c.chat.completions.with_raw_response.create(model="m", messages=MSG).headers["x-hybridgate-deployment"]
                  for _ in range(20)]
        assert served == ["b"] * 20  # zero client-visible errors
        assert breaker_state(gw, "a") == "open"
        hits_while_open = a.stats["total"]
        for _ in range(5):
            c.chat.completions.create(model="m", messages=MSG)
        assert a.stats["total"] == hits_while_open  # an open breaker gets no traffic
        metrics = httpx.get(gw.base_url + "/metrics").text
        assert 'hybridgate_breaker_open{deployment="a"} 1.0' in metrics

        a.set_faults()  # provider recovers
        clock.t += s.breaker.cooldown_s * 0.9
        assert breaker_state(gw, "a") == "open"  # not before the cooldown has passed
        clock.t += s.breaker.cooldown_s * 0.2
        assert breaker_state(gw, "a") == "half_open"
        r = c.chat.completions.with_raw_response.create(model="m", messages=MSG)
        assert r.headers["x-hybridgate-deployment"] == "a"  # the probe went to a and succeeded
        assert breaker_state(gw, "a") == "closed"


RETRYING = """
name: retrying
selector: {type: fixed, order: [a, b]}
retry: {max_attempts: 6, max_attempts_per_deployment: 4, jitter: none, backoff_base_s: 0.01}
"""


def _post(gw: GatewayThread, content: str, model: str = "retrying", timeout: float = 30) -> httpx.Response:
    return httpx.post(gw.base_url + "/v1/chat/completions", timeout=timeout,
                      json={"model": model, "messages": [{"role": "user", "content": content}]})


def test_retries_stop_at_a_breaker_that_opened_and_a_failed_half_open_probe_is_not_retried(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    """The breaker is asked before every attempt, retries included: once the failures of a request
    open it (or its half-open probe fails), that deployment gets no more of the request's retries."""
    a, b = two_providers
    s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url), dep("b", "m", b.base_url)])
    with running_gateway(s) as gw:
        clock = manual_breaker_clock(gw)
        assert httpx.put(gw.base_url + "/admin/api/policies/retrying", content=RETRYING,
                         headers={"content-type": "application/yaml"}).status_code == 201
        a.set_faults("500")
        r = _post(gw, "hello")
        assert r.status_code == 200 and r.headers["x-hybridgate-deployment"] == "b"
        assert a.stats["total"] == s.breaker.consecutive_failures  # 3 of the 4 tries the policy allows here
        assert breaker_state(gw, "a") == "open"
        clock.t += s.breaker.cooldown_s * 1.1
        assert breaker_state(gw, "a") == "half_open"
        r = _post(gw, "hello again")
        assert r.status_code == 200 and r.headers["x-hybridgate-deployment"] == "b"
        assert a.stats["total"] == s.breaker.consecutive_failures + 1  # the failed probe, not retried
        assert breaker_state(gw, "a") == "open"
        rid = r.headers["x-request-id"]
        gw.call(gw.services.sink.flush())

    engine = sa.create_engine(sqlite_url.replace("+aiosqlite", ""))
    with engine.connect() as conn:
        tried = conn.execute(sa.text("SELECT deployment, status FROM attempts WHERE request_id = :r "
                                     "ORDER BY attempt_no"), {"r": rid}).all()
        logged = conn.execute(sa.text("SELECT deployment, attempts_count FROM requests WHERE id = :r"),
                              {"r": rid}).one()
    engine.dispose()
    assert [tuple(t) for t in tried] == [("a", "error"), ("b", "ok")] and tuple(logged) == ("b", 2)


def test_a_half_open_probe_without_a_verdict_frees_its_slot_for_the_next_request(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    """A probe the upstream refuses as the client's mistake (a 400), or whose client hangs up, says
    nothing about the deployment's health: the next request probes at once, instead of the deployment
    staying half-open and unused until the probe timeout."""
    a, b = two_providers
    s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url), dep("b", "m", b.base_url)])
    with running_gateway(s) as gw:
        clock = manual_breaker_clock(gw)
        assert httpx.put(gw.base_url + "/admin/api/policies/retrying", content=RETRYING,
                         headers={"content-type": "application/yaml"}).status_code == 201
        for probe in ("client error", "client hangs up"):
            a.set_faults("500")
            assert _post(gw, "trip").headers["x-hybridgate-deployment"] == "b"
            assert breaker_state(gw, "a") == "open"
            a.set_faults()
            clock.t += s.breaker.cooldown_s * 1.1
            before = a.stats["total"]
            if probe == "client error":
                r = _post(gw, "[[fault:error:400]] bad")
                assert r.status_code == 400  # the probe went to a, which refused the request itself
            else:
                with pytest.raises(httpx.ReadTimeout):
                    _post(gw, "[[fault:latency:3000]] slow", timeout=1.0)
                wait_until(lambda n=before + 1: a.stats["total"] == n
                           and gw.services.router.in_flight.snapshot().get("a", 0) == 0,
                           what="the probe reached a, then ended cancelled")
            assert a.stats["total"] == before + 1 and breaker_state(gw, "a") == "half_open"
            r = _post(gw, "next")
            assert r.headers["x-hybridgate-deployment"] == "a", probe  # probed at once, and it answered
            assert breaker_state(gw, "a") == "closed"


def test_every_breaker_open_is_a_503_with_retry_after_for_a_model_as_for_a_policy(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    """No deployment may be tried (every breaker open, or half-open with its probe taken): the client
    gets 503 no_candidates with Retry-After, in its API's shape, for a plain model name as for a policy;
    not a 502 that blames an upstream nobody called."""
    a, b = two_providers
    s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url), dep("b", "m", b.base_url)])
    with running_gateway(s) as gw:
        for d in ("a", "b"):
            gw.call(gw.services.router.breakers.force(d, "open"))
        r = _post(gw, "hi", model="m")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        err = r.json()["error"]
        assert err["code"] == "no_candidates" and err["type"] == "server_error"
        m = httpx.post(gw.base_url + "/v1/messages", json={"model": "m", "max_tokens": 5, "messages": MSG})
        assert m.status_code == 503 and m.headers["retry-after"] == "2"
        assert m.json()["type"] == "error" and m.json()["error"]["type"] == "overloaded_error"
        with pytest.raises(openai.InternalServerError) as ei:
            sdk(gw).chat.completions.create(model="m", messages=MSG, stream=True)
        assert ei.value.status_code == 503
        assert a.stats["total"] == 0 and b.stats["total"] == 0
        rid = r.headers["x-request-id"]
        gw.call(gw.services.sink.flush())

    engine = sa.create_engine(sqlite_url.replace("+aiosqlite", ""))
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT http_status, error_type, attempts_count FROM requests WHERE id = :r"), {"r": rid}).one()
    engine.dispose()
    assert tuple(row) == (503, "server_error", 0)


FIXED_AB = """
name: fixed-ab
selector: {type: fixed, order: [a, b]}
"""


def test_retry_after_of_a_503_is_the_time_until_the_first_breaker_goes_half_open(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    """A breaker stays open for its whole cooldown, so a 503 for want of a deployment says to come back
    when the first of the request's breakers goes half-open (rounded up, at least 1 s): for a plain model
    name (the executor finds every breaker shut) and a policy (no candidates left), in OpenAI's error
    shape and in Anthropic's (overloaded_error)."""
    a, b = two_providers
    s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url), dep("b", "m", b.base_url)],
                 breaker={"consecutive_failures": 1, "min_requests": 100, "cooldown_s": 7, "window_s": 10})
    with running_gateway(s) as gw:
        clock = manual_breaker_clock(gw)
        assert httpx.put(gw.base_url + "/admin/api/policies/fixed-ab", content=FIXED_AB,
                         headers={"content-type": "application/yaml"}).status_code == 201
        a.set_faults("500")
        assert _post(gw, "trip a", model="m").headers["x-hybridgate-deployment"] == "b"  # a opens at t=0
        clock.t += 2
        b.set_faults("500")
        assert _post(gw, "trip b", model="m").status_code == 502  # b opens at t=2
        assert (breaker_state(gw, "a"), breaker_state(gw, "b")) == ("open", "open")
        hits = a.stats["total"] + b.stats["total"]

        def refused(model: str) -> tuple[str, str]:
            """The Retry-After of the OpenAI-shaped and of the Anthropic-shaped 503."""
            r = _post(gw, "hi", model=model)
            assert r.status_code == 503 and r.json()["error"]["code"] == "no_candidates", r.text
            m = httpx.post(gw.base_url + "/v1/messages", json={"model": model, "max_tokens": 5, "messages": MSG})
            assert m.status_code == 503 and m.json()["error"]["type"] == "overloaded_error", m.text
            return r.headers["retry-after"], m.headers["retry-after"]

        clock.t += 1.5  # a half-opens in 3.5 s, b in 5.5 s
        assert refused("m") == ("4", "4")
        assert refused("fixed-ab") == ("4", "4")
        clock.t += 3  # a in 0.5 s: never less than 1 s
        assert refused("m") == ("1", "1")
        assert refused("fixed-ab") == ("1", "1")
        assert a.stats["total"] + b.stats["total"] == hits  # no refused request reached an upstream
        clock.t += 0.5
        a.set_faults()
        assert _post(gw, "again", model="fixed-ab").headers["x-hybridgate-deployment"] == "a"  # as told


def test_two_gateways_sharing_redis_agree_on_breaker_state(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path,
    redis_url: str, redis_prefix: str,
) -> None:
    a, b = two_providers
    deployments = [dep("a", "m", a.base_url), dep("b", "m", b.base_url)]
    # generous Redis timeouts: this test is about agreement, not about fail-fast on a loaded CI box
    # and a long cooldown: on a loaded box more than the default 0.5 s can pass between opening the
    # breaker and asking the other process, which would then rightly report half-open
    shared = {"redis_url": redis_url, "redis_prefix": redis_prefix, "redis_timeout_s": 5.0,
              "redis_connect_timeout_s": 10.0,
              "breaker": {"consecutive_failures": 3, "min_requests": 100, "cooldown_s": 30, "window_s": 10}}
    s1 = settings(tmp_path, sqlite_url, deployments, **shared)
    s2 = settings(tmp_path, sqlite_url, deployments, **shared)
    with running_gateway(s1) as g1, running_gateway(s2) as g2:
        a.set_faults("503")
        for _ in range(6):
            sdk(g1).chat.completions.create(model="m", messages=MSG)
        assert breaker_state(g1, "a") == "open"
        assert breaker_state(g2, "a") == "open"  # the other process sees it at once
        before = a.stats["total"]
        sdk(g2).chat.completions.create(model="m", messages=MSG)
        assert a.stats["total"] == before
        # manual close through one process is seen by the other
        httpx.post(g2.base_url + "/admin/api/breakers/a", json={"mode": "closed"})
        assert breaker_state(g1, "a") == "closed"


def test_retry_after_is_honoured(two_providers: tuple[FakeProviderThread, FakeProviderThread],
                                 sqlite_url: str, tmp_path: Path) -> None:
    a, _ = two_providers
    with running_gateway(settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url)])) as gw:
        a.fail_next(1, "429:1")
        t0 = time.monotonic()
        resp = sdk(gw).chat.completions.create(model="m", messages=MSG)
        elapsed = time.monotonic() - t0
        assert resp.choices[0].message.content
        assert elapsed >= 1.0  # waited as the upstream asked, then succeeded on the same deployment
        assert a.stats["total"] == 2


def test_stream_cut_before_first_token_falls_back_invisibly(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    a, b = two_providers
    s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url), dep("b", "m", b.base_url)])
    with running_gateway(s) as gw:
        a.set_faults("cut:0")
        raw = sdk(gw).chat.completions.with_raw_response.create(model="m", messages=MSG, stream=True)
        chunks = list(raw.parse())
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert raw.headers["x-hybridgate-deployment"] == "b"


def test_stream_cut_after_first_token_is_an_error_event_not_a_splice(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    a, b = two_providers
    s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url), dep("b", "m", b.base_url)])
    with running_gateway(s) as gw:
        a.set_faults("cut:3")
        got: list[str] = []
        with pytest.raises(openai.APIError):
            for ch in sdk(gw).chat.completions.create(model="m", messages=MSG, stream=True):
                got.extend(c.delta.content or "" for c in ch.choices)
        assert got  # the first tokens arrived, then an error event; b never answered
        assert b.stats["total"] == 0


POLICY = """
name: long
filters: {context_fit: false}
selector: {type: fixed, order: [small, big]}
fallbacks:
  chain: [big]
  triggers: [5xx, timeout, 429, connection, context_window]
retry: {max_attempts: 3, max_attempts_per_deployment: 1}
"""


def test_context_window_exceeded_moves_to_the_larger_context_model(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    a, b = two_providers
    deployments = [dep("small", "small-model", a.base_url, context_window=4096),
                   dep("big", "big-model", b.base_url, context_window=128000)]
    with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
        r = httpx.put(gw.base_url + "/admin/api/policies/long", content=POLICY,
                      headers={"content-type": "application/yaml"})
        assert r.status_code == 201, r.text
        a.set_faults("context_length")
        raw = sdk(gw).chat.completions.with_raw_response.create(model="long", messages=MSG)
        assert raw.headers["x-hybridgate-deployment"] == "big"
        assert raw.headers["x-hybridgate-policy"] == "long@1"
        assert raw.parse().model == "big-model"


def test_policy_validation_names_field_and_line_and_simulate_explains(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    a, b = two_providers
    deployments = [dep("small", "small-model", a.base_url), dep("big", "big-model", b.base_url)]
    with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
        bad = POLICY.replace("type: fixed", "type: fancy")
        r = httpx.put(gw.base_url + "/admin/api/policies/long", content=bad,
                      headers={"content-type": "application/yaml"})
        assert r.status_code == 422
        err = r.json()["error"]
        assert "selector" in err["message"] and "line 4" in err["message"]
        assert httpx.put(gw.base_url + "/admin/api/policies/long", content=POLICY,
                         headers={"content-type": "application/yaml"}).status_code == 201
        sim = httpx.post(gw.base_url + "/admin/api/policies/long/simulate", json={"messages": MSG}).json()
        assert sim["candidates"][0] == "small" and sim["trace"]
        assert a.stats["total"] == 0 and b.stats["total"] == 0  # simulate calls no provider
        ids = {m["id"] for m in httpx.get(gw.base_url + "/v1/models").json()["data"]}
        assert "long" in ids


async def test_budget_holds_under_50_concurrent_requests(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    a, _ = two_providers
    # 1 USD per token in and out: each request costs a few tens of USD; max_tokens=20 bounds it.
    s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url,
                                            pricing={"input_per_mtok": 1e6, "output_per_mtok": 1e6})],
                 require_keys=True)
    with running_gateway(s) as gw:
        created = httpx.post(gw.base_url + "/admin/api/keys",
                             json={"name": "budgeted", "budget_usd": 300, "budget_period": "day"}).json()
        key = created["key"]
        client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=30)

        async def one(i: int) -> tuple[str, float]:
            try:
                r = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"q {i}"}], max_tokens=20)
            except openai.RateLimitError as exc:
                assert exc.body["code"] == "budget_exceeded"  # type: ignore[index]
                return "rejected", 0.0
            u = r.usage
            assert u is not None
            return "ok", float(u.prompt_tokens + u.completion_tokens)

        results = await asyncio.gather(*(one(i) for i in range(50)))
        spent = sum(c for _, c in results)
        ok = sum(1 for s_, _ in results if s_ == "ok")
        assert 0 < ok < 50
        max_one = 30 + 20  # prompt estimate upper bound + max_tokens, in USD at these prices
        assert spent <= 300 + max_one


def test_key_rate_limit_and_concurrency_cap_return_429_with_retry_after(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    a, _ = two_providers
    with running_gateway(settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url)], require_keys=True)) as gw:
        key = httpx.post(gw.base_url + "/admin/api/keys", json={"name": "rl", "rpm_limit": 3}).json()["key"]
        c = sdk(gw, key)
        for _ in range(3):
            c.chat.completions.create(model="m", messages=MSG)
        with pytest.raises(openai.RateLimitError) as ei:
            c.chat.completions.create(model="m", messages=MSG)
        assert ei.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert int(ei.value.response.headers["retry-after"]) >= 1

        key2 = httpx.post(gw.base_url + "/admin/api/keys", json={"name": "cc", "max_concurrency": 1}).json()["key"]

        async def two_at_once() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as h:
                # long enough that the second request arrives while the first holds the slot, loaded box or not
                slow = {"model": "m", "messages": [{"role": "user", "content": "slow [[fault:latency:1500]]"}]}
                rs = await asyncio.gather(*(h.post(gw.base_url + "/v1/chat/completions", json=slow,
                                                   headers={"authorization": f"Bearer {key2}"}) for _ in range(2)))
                return sorted(r.status_code for r in rs)

        assert asyncio.run(two_at_once()) == [200, 429]
        # the lease is released when the request ends
        assert sdk(gw, key2).chat.completions.create(model="m", messages=MSG).choices


def test_a_request_refused_for_its_budget_spends_none_of_the_keys_tokens_per_minute(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    """Tokens/min are charged with the request's estimate before routing; a request then refused (its
    budget cannot cover it) sends nothing upstream, so the estimate is refunded: a request the key can
    afford right after it is admitted, not refused by a token limit nothing used."""
    a, _ = two_providers
    pricey = dep("a", "m", a.base_url, pricing={"input_per_mtok": 1e6, "output_per_mtok": 1e6})  # 1 USD/token
    with running_gateway(settings(tmp_path, sqlite_url, [pricey], require_keys=True)) as gw:
        key = httpx.post(gw.base_url + "/admin/api/keys", json={
            "name": "t", "tpm_limit": 1000, "budget_usd": 600, "budget_period": "day"}).json()["key"]
        c = sdk(gw, key)
        with pytest.raises(openai.RateLimitError) as ei:
            c.chat.completions.create(model="m", messages=MSG, max_tokens=900)  # ~905 USD worst case
        assert ei.value.body["code"] == "budget_exceeded"  # type: ignore[index]
        assert c.chat.completions.create(model="m", messages=MSG, max_tokens=500).choices
        assert a.stats["total"] == 1


def test_policy_change_reaches_another_gateway_process_within_2s(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], pg_url: str, tmp_path: Path
) -> None:
    from requestlog.migrate import upgrade

    upgrade(pg_url)
    a, b = two_providers
    deployments = [dep("small", "small-model", a.base_url), dep("big", "big-model", b.base_url)]
    name = f"hot-{uuid.uuid4().hex[:6]}"
    with running_gateway(settings(tmp_path, pg_url, deployments)) as g1, \
            running_gateway(settings(tmp_path, pg_url, deployments)) as g2:
        v1 = POLICY.replace("name: long", f"name: {name}")
        assert httpx.put(g1.base_url + f"/admin/api/policies/{name}", content=v1,
                         headers={"content-type": "application/yaml"}).status_code == 201
        v2 = v1.replace("order: [small, big]", "order: [big, small]")
        t0 = time.monotonic()
        assert httpx.put(g1.base_url + f"/admin/api/policies/{name}", content=v2,
                         headers={"content-type": "application/yaml"}).status_code == 201
        while True:
            r = httpx.post(g2.base_url + "/v1/chat/completions", json={"model": name, "messages": MSG})
            if r.status_code == 200 and r.headers["x-hybridgate-policy"] == f"{name}@2":
                assert r.headers["x-hybridgate-deployment"] == "big"
                break
            assert time.monotonic() - t0 < 2.0, "the other process did not pick up the new version in 2 s"
            time.sleep(0.05)


CASCADE = """
name: cascade
selector: {type: fixed, order: [cheap]}
escalation: {first: [cheap], to: [strong], threshold: THRESHOLD, score: logprobs}
"""


@pytest.mark.parametrize(("threshold", "expect"), [(0.999, "strong-model"), (0.5, "cheap-model")])
def test_cascade_escalates_low_confidence_answers_and_logs_both_attempts(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path,
    threshold: float, expect: str,
) -> None:
    a, b = two_providers
    caps = ["chat", "completion", "logprobs"]
    deployments = [dep("cheap", "cheap-model", a.base_url, capabilities=caps),
                   dep("strong", "strong-model", b.base_url, capabilities=caps)]
    with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
        spec = CASCADE.replace("THRESHOLD", str(threshold))
        assert httpx.put(gw.base_url + "/admin/api/policies/cascade", content=spec,
                         headers={"content-type": "application/yaml"}).status_code == 201
        r = httpx.post(gw.base_url + "/v1/chat/completions",
                       json={"model": "cascade", "messages": MSG})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == expect and r.headers["x-hybridgate-model"] == expect
        assert body["choices"][0]["logprobs"] is None  # the client did not ask for them
        assert "logprobs=0.9" in r.headers["x-hybridgate-route-reason"]  # fake answers are 90-99% sure
        assert a.stats["total"] == 1 and b.stats["total"] == (1 if expect == "strong-model" else 0)
        rid = r.headers["x-request-id"]
        gw.call(gw.services.sink.flush())


    engine = sa.create_engine(sqlite_url.replace("+aiosqlite", ""))
    with engine.connect() as conn:
        n_attempts = conn.execute(sa.text("SELECT count(*) FROM attempts WHERE request_id = :r"), {"r": rid}).scalar()
        reason = conn.execute(sa.text("SELECT route_reason FROM requests WHERE id = :r"), {"r": rid}).scalar()
    engine.dispose()
    assert n_attempts == (2 if expect == "strong-model" else 1)
    assert ("escalated" in reason) == (expect == "strong-model")


@pytest.mark.parametrize(("threshold", "expect"), [(0.999, "strong-model"), (0.5, "cheap-model")])
def test_streamed_cascade_shows_only_the_kept_answer_to_the_sdk(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path,
    threshold: float, expect: str,
) -> None:
    """stream=true under a cascade: the cheap answer is judged whole first, then one answer streams
    (the kept one), with usage when asked; the SDK sees an ordinary stream."""
    a, b = two_providers
    caps = ["chat", "completion", "logprobs"]
    deployments = [dep("cheap", "cheap-model", a.base_url, capabilities=caps),
                   dep("strong", "strong-model", b.base_url, capabilities=caps)]
    with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
        assert httpx.put(gw.base_url + "/admin/api/policies/cascade",
                         content=CASCADE.replace("THRESHOLD", str(threshold)),
                         headers={"content-type": "application/yaml"}).status_code == 201
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0)
        chunks = list(client.chat.completions.create(
            model="cascade", messages=MSG, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and {c.model for c in chunks} == {expect}
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
        assert a.stats["total"] == 1 and b.stats["total"] == (1 if expect == "strong-model" else 0)
        comp = list(client.completions.create(model="cascade", prompt="say hi", stream=True))
        assert "".join(c.choices[0].text for c in comp) and {c.model for c in comp} == {expect}


def test_team_and_user_budgets_from_config_cut_off_with_429(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    a, _ = two_providers
    pricey = dep("a", "m", a.base_url, pricing={"input_per_mtok": 1e6, "output_per_mtok": 1e6})  # 1 USD/token
    s = settings(tmp_path, sqlite_url, [pricey], require_keys=True,
                 budgets=[{"scope": "team:ml", "limit_usd": 60, "period": "day"},
                          {"scope": "user:alice", "limit_usd": 60, "period": "day"}])
    with running_gateway(s) as gw:
        key = httpx.post(gw.base_url + "/admin/api/keys", json={"name": "t", "team": "ml"}).json()["key"]
        other = httpx.post(gw.base_url + "/admin/api/keys", json={"name": "o"}).json()["key"]
        c = sdk(gw, key)
        codes = []
        for _ in range(12):
            try:
                c.chat.completions.create(model="m", messages=MSG, max_tokens=10)
                codes.append(200)
            except openai.RateLimitError as exc:
                assert exc.body["code"] == "budget_exceeded"  # type: ignore[index]
                codes.append(429)
        assert 200 in codes and codes[-1] == 429  # the team's budget ran out
        assert sdk(gw, other).chat.completions.create(model="m", messages=MSG, max_tokens=10).choices  # other team
        for _ in range(12):
            try:
                sdk(gw, other).chat.completions.create(model="m", messages=MSG, max_tokens=10, user="alice")
            except openai.RateLimitError:
                break
        else:
            raise AssertionError("alice's user budget never cut off")


def test_a_budget_spent_before_redis_lost_its_data_stays_spent(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path,
    redis_url: str, redis_prefix: str,
) -> None:
    """Redis restarted without persistence forgets every account; the gateway still knows what it saw
    spent and raises Redis to it on the next reserve, so the key's budget is not admitted afresh while
    waiting for the next reconcile round with the log (long here, so only that path can refuse)."""
    a, _ = two_providers
    pricey = dep("a", "m", a.base_url, pricing={"input_per_mtok": 1e6, "output_per_mtok": 1e6})  # 1 USD/token
    s = settings(tmp_path, sqlite_url, [pricey], require_keys=True, redis_url=redis_url,
                 redis_prefix=redis_prefix, redis_timeout_s=5.0, redis_connect_timeout_s=10.0,
                 budget_reconcile_s=3600)
    with running_gateway(s) as gw:
        key = httpx.post(gw.base_url + "/admin/api/keys",
                         json={"name": "k", "budget_usd": 50, "budget_period": "day"}).json()["key"]
        c = sdk(gw, key)

        def spend_until_refused() -> int:
            for n in range(20):
                try:
                    c.chat.completions.create(model="m", messages=MSG, max_tokens=10)
                except openai.RateLimitError as exc:
                    assert exc.body["code"] == "budget_exceeded"  # type: ignore[index]
                    return n
            raise AssertionError("the budget never ran out")

        assert spend_until_refused() > 0
        asyncio.run(delete_keys(redis_url, redis_prefix))  # Redis restarted without its data
        assert spend_until_refused() == 0
        assert not gw.services.router.budgets.guard.degraded  # Redis answered all along


REFUSAL_FALLBACK = """
name: careful
selector: {type: fixed, order: [small, big]}
fallbacks:
  chain: [big]
  triggers: [5xx, timeout, content_policy]
retry: {max_attempts: 3, max_attempts_per_deployment: 1}
"""


def test_content_policy_refusal_falls_back_when_the_policy_says_so(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    a, b = two_providers
    deployments = [dep("small", "small-model", a.base_url), dep("big", "big-model", b.base_url)]
    with running_gateway(settings(tmp_path, sqlite_url, deployments)) as gw:
        assert httpx.put(gw.base_url + "/admin/api/policies/careful", content=REFUSAL_FALLBACK,
                         headers={"content-type": "application/yaml"}).status_code == 201
        a.set_faults("content_filter")
        r = sdk(gw).chat.completions.with_raw_response.create(model="careful", messages=MSG)
        assert r.headers["x-hybridgate-deployment"] == "big"
        # a plain model name has no such trigger: the refusal reaches the client as a 400
        with pytest.raises(openai.BadRequestError) as ei:
            sdk(gw).chat.completions.create(model="small-model", messages=MSG)
        assert ei.value.body["code"] == "content_filter"  # type: ignore[index]


def test_a_model_named_directly_tries_first_the_deployments_that_declare_what_the_request_needs(
    two_providers: tuple[FakeProviderThread, FakeProviderThread], sqlite_url: str, tmp_path: Path
) -> None:
    """Of a model's deployments, a request with tools goes first to one declaring `tools`; one without
    keeps the configured order, and a deployment declaring nothing extra still serves when it is alone."""
    a, b = two_providers
    s = settings(tmp_path, sqlite_url, [dep("a", "m", a.base_url),
                                        dep("b", "m", b.base_url, capabilities=["chat", "tools"]),
                                        dep("c", "solo", a.base_url)])
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    with running_gateway(s) as gw:
        plain = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "m", "messages": MSG})
        with_tools = httpx.post(gw.base_url + "/v1/chat/completions",
                                json={"model": "m", "messages": MSG, "tools": tools})
        solo = httpx.post(gw.base_url + "/v1/chat/completions",
                          json={"model": "solo", "messages": MSG, "tools": tools})
    assert plain.headers["x-hybridgate-deployment"] == "a"
    assert with_tools.status_code == 200 and with_tools.headers["x-hybridgate-deployment"] == "b"
    assert solo.status_code == 200 and solo.headers["x-hybridgate-deployment"] == "c"
