"""Every request leaves exactly one `requests` row and one `attempts` row per upstream try,
in real Postgres, with correct tokens and cost, including through a database outage."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from backends.fake_provider import FakeProviderThread
from requestlog.migrate import upgrade
from requestlog.urls import to_sync_url
from tests.support.gateway import gateway_settings
from tests.support.harness import GatewayThread, running_gateway
from tests.support.requestlog import ThreadedProxy
from tests.support.wait import await_until


async def _rows(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.text(sql), params)).mappings())
    finally:
        await engine.dispose()


def _chat(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **kw}


async def _cancel_stream(client: httpx.AsyncClient, url: str) -> str:
    """Open a slow stream, read its first event, then hang up like a client that went away."""
    async with client.stream("POST", url, json=_chat("slow [[fault:chunk_latency:200]]", stream=True)) as r:
        rid = r.headers["x-request-id"]
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                break
    return rid


async def test_each_request_kind_leaves_one_row_with_tokens_and_cost(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    upgrade(fresh_pg_url)
    with FakeProviderThread() as fp:
        settings = gateway_settings(fp.base_url, fresh_pg_url, tmp_path)
        with running_gateway(settings) as gw:
            url = gw.base_url + "/v1/chat/completions"
            async with httpx.AsyncClient(timeout=20) as c:
                ok = await c.post(url, json=_chat("hello world"))
                streamed = await c.post(url, json=_chat("stream it", stream=True,
                                                          stream_options={"include_usage": True}))
                retried = await c.post(url, json=_chat("flaky"), headers={})
                bad = await c.post(url, json={"model": "fake-model"})
                unknown = await c.post(url, json=_chat("x") | {"model": "nope"})
                failed = await c.post(url, json=_chat("boom [[fault:500]]"))
                cancelled_rid = await _cancel_stream(c, url)

            async def logged(rid: str) -> bool:
                await gw.acall(gw.services.sink.flush())
                return bool(await _rows(fresh_pg_url, "SELECT id FROM requests WHERE id = :rid", rid=rid))

            # the cancelled stream's handler notices the hang-up, then logs its row
            await await_until(lambda: logged(cancelled_rid), what="the cancelled stream was never logged")
            ids = {
                "ok": ok.headers["x-request-id"], "streamed": streamed.headers["x-request-id"],
                "retried": retried.headers["x-request-id"], "bad": bad.headers["x-request-id"],
                "unknown": unknown.headers["x-request-id"], "failed": failed.headers["x-request-id"],
                "cancelled": cancelled_rid,
            }
    rows = {r["id"]: r for r in await _rows(fresh_pg_url, "SELECT * FROM requests")}
    attempts = await _rows(fresh_pg_url, "SELECT * FROM attempts")
    assert set(rows) == set(ids.values())
    by_req: dict[str, list[Any]] = {}
    for a in attempts:
        by_req.setdefault(a["request_id"], []).append(a)

    r = rows[ids["ok"]]
    body = ok.json()
    assert r["status"] == "ok" and r["http_status"] == 200 and not r["streamed"]
    assert r["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert r["completion_tokens"] == body["usage"]["completion_tokens"]
    expected_cost = (body["usage"]["prompt_tokens"] * 1.0 + body["usage"]["completion_tokens"] * 2.0) / 1e6
    assert r["cost_usd"] == pytest.approx(expected_cost)
    assert r["served_model"] == "fake-model" and r["deployment"] == "fake-a"
    assert r["latency_ms"] > 0 and r["route_reason"]
    assert len(by_req[ids["ok"]]) == 1 and by_req[ids["ok"]][0]["cost_usd"] == pytest.approx(expected_cost)
    assert by_req[ids["ok"]][0]["http_status"] == 200  # a successful attempt keeps the upstream's status

    s = rows[ids["streamed"]]
    assert s["streamed"] and s["status"] == "ok" and s["ttft_ms"] is not None and s["completion_tokens"] > 0
    assert [a["http_status"] for a in by_req[ids["streamed"]]] == [200]

    assert rows[ids["bad"]]["http_status"] == 400 and ids["bad"] not in by_req
    assert rows[ids["unknown"]]["http_status"] == 404 and ids["unknown"] not in by_req

    f = rows[ids["failed"]]
    assert f["status"] == "error" and f["http_status"] == 502
    assert len(by_req[ids["failed"]]) == f["attempts_count"] >= 2  # retried before giving up
    assert all(a["status"] == "error" and a["error_type"] == "server_error" for a in by_req[ids["failed"]])

    cx = rows[ids["cancelled"]]
    assert cx["status"] == "cancelled" and cx["streamed"]
    assert [a["status"] for a in by_req[ids["cancelled"]]] == ["cancelled"]


async def test_a_non_streamed_request_whose_client_hangs_up_is_cancelled_then_not_later(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    """The client gives up 0.3 s into a 5 s upstream answer: the gateway drops the upstream call when it
    notices the hang-up and logs a cancelled row then, instead of waiting out (and billing) the answer."""
    upgrade(fresh_pg_url)
    with FakeProviderThread() as fp:
        settings = gateway_settings(fp.base_url, fresh_pg_url, tmp_path)
        with running_gateway(settings) as gw:
            async with httpx.AsyncClient(timeout=0.3) as c:
                with pytest.raises(httpx.ReadTimeout):
                    await c.post(gw.base_url + "/v1/chat/completions", json=_chat("slow [[fault:latency:5000]]"))

            async def cancelled_rows() -> list[Any]:
                await gw.acall(gw.services.sink.flush())
                return await _rows(fresh_pg_url, "SELECT * FROM requests WHERE status = 'cancelled'")

            await await_until(cancelled_rows, timeout_s=3, what="the abandoned request logged as cancelled")
            (row,) = await cancelled_rows()
            attempts = await _rows(fresh_pg_url, "SELECT * FROM attempts WHERE request_id = :rid", rid=row["id"])
    assert row["http_status"] == 499 and not row["streamed"] and row["latency_ms"] < 3000
    assert [a["status"] for a in attempts] == ["cancelled"]


async def test_postgres_outage_under_load_loses_and_duplicates_nothing(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    upgrade(fresh_pg_url)
    database = fresh_pg_url.rsplit("/", 1)[1]
    proxy = ThreadedProxy()
    n_requests, concurrency = 400, 16
    with FakeProviderThread() as fp:
        settings = gateway_settings(fp.base_url, proxy.proxy.url(database), tmp_path,
                                    log={"bodies": "hashed", "spool_dir": str(tmp_path / "spool"),
                                         "batch_max_ms": 20})
        with running_gateway(settings) as gw:
            gw.services.sink._probe_initial = 0.1  # noqa: SLF001 - reprobe quickly in the test
            gw.services.sink._probe_max = 0.5  # noqa: SLF001
            url = gw.base_url + "/v1/chat/completions"
            sent: list[str] = []
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int, c: httpx.AsyncClient) -> None:
                async with sem:
                    stream = i % 3 == 0
                    text = f"req {i}" + (" [[fault:503]]" if i % 17 == 0 else "")
                    r = await c.post(url, json=_chat(text, stream=stream))
                    sent.append(r.headers["x-request-id"])

            async with httpx.AsyncClient(timeout=30) as c:
                tasks = [asyncio.create_task(one(i, c)) for i in range(n_requests)]
                await asyncio.sleep(0.3)
                await proxy.cut()  # Postgres vanishes mid-load
                await asyncio.sleep(1.5)
                await proxy.restore()
                await asyncio.gather(*tasks)
            stats_mid = gw.services.sink.stats()
            for _ in range(100):
                await gw.acall(gw.services.sink.flush())
                st = gw.services.sink.stats()
                if st["db_up"] and not st.get("spool_pending_files") and st["queued"] == 0:
                    break
                await asyncio.sleep(0.1)
    proxy.close()
    assert stats_mid["spooled"] > 0, "the outage should have sent rows to the spool"
    counts = (await _rows(fresh_pg_url, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM requests"))[0]
    assert len(sent) == n_requests
    assert counts["n"] == counts["d"] == n_requests
    ids = {r["id"] for r in await _rows(fresh_pg_url, "SELECT id FROM requests")}
    assert ids == set(sent)
    att = (await _rows(fresh_pg_url, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM attempts"))[0]
    expected_attempts = (await _rows(fresh_pg_url, "SELECT sum(attempts_count) AS s FROM requests"))[0]["s"]
    assert att["n"] == att["d"] == expected_attempts


async def test_client_hanging_up_on_a_non_streamed_request_still_leaves_one_row(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    upgrade(fresh_pg_url)
    with FakeProviderThread() as fp, running_gateway(gateway_settings(fp.base_url, fresh_pg_url, tmp_path)) as gw:
        async with httpx.AsyncClient(timeout=0.2) as c:
            with contextlib.suppress(httpx.TimeoutException):
                await c.post(gw.base_url + "/v1/chat/completions", json=_chat("slow [[fault:latency:800]]"))

        async def logged() -> bool:  # the upstream answers after the client left, then the row is written
            await gw.acall(gw.services.sink.flush())
            return bool(await _rows(fresh_pg_url, "SELECT id FROM requests"))

        await await_until(logged, what="the abandoned request was never logged")
    rows = await _rows(fresh_pg_url, "SELECT status, attempts_count FROM requests")
    attempts = await _rows(fresh_pg_url, "SELECT count(*) AS n FROM attempts")
    assert len(rows) == 1 and rows[0]["attempts_count"] == attempts[0]["n"] == 1


async def test_failed_log_writes_and_lost_rows_are_counters_in_metrics(fresh_pg_url: str, tmp_path: Path) -> None:
    """What the request log could not do is in /metrics as counters an operator can alert on: writes the
    database failed (the rows went to the spool), rows it refused, rows lost altogether."""
    upgrade(fresh_pg_url)
    proxy = ThreadedProxy()
    try:
        with FakeProviderThread() as fp:
            settings = gateway_settings(fp.base_url, proxy.url(fresh_pg_url.rsplit("/", 1)[1]), tmp_path)
            with running_gateway(settings) as gw:
                async with httpx.AsyncClient(base_url=gw.base_url, timeout=20) as c:
                    assert (await c.post("/v1/chat/completions", json=_chat("before"))).status_code == 200
                    await gw.acall(gw.services.sink.flush())
                    await proxy.cut()  # the database vanishes: the next write fails into the spool
                    assert (await c.post("/v1/chat/completions", json=_chat("during"))).status_code == 200
                    await gw.acall(gw.services.sink.flush())
                    text = (await c.get("/metrics")).text
                    stats = gw.services.sink.stats()
    finally:
        proxy.close()
    assert stats["write_errors"] >= 1 and stats["spooled"] >= 1
    assert f"\nhybridgate_log_write_errors_total {float(stats['write_errors'])}\n" in text, text
    assert "\n# TYPE hybridgate_log_write_errors_total counter\n" in text
    assert "\nhybridgate_log_rejected_rows_total 0.0\n" in text and "\nhybridgate_log_dropped_rows_total 0.0\n" in text


STREAMS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "{}"}]}),
    "messages": ("/v1/messages", {"max_tokens": 50, "messages": [{"role": "user", "content": "{}"}]}),
    "responses": ("/v1/responses", {"input": "{}"}),
}


@pytest.mark.parametrize("text", ["one two three", "[[fault:cut:2]] one two three four five"])
@pytest.mark.parametrize("api", list(STREAMS))
def test_a_streamed_answer_is_logged_exactly_as_the_client_received_it(
    gateway: GatewayThread, sqlite_url: str, api: str, text: str
) -> None:
    """The logged response body of a stream is the bytes sent, opening events (message_start;
    response.created, response.in_progress), the first chunk's, and the closing ones ([DONE], message_stop,
    response.completed, or the error events of a stream cut mid-way) included."""
    path, fields = STREAMS[api]
    body = orjson.loads(orjson.dumps(fields).replace(b"{}", text.encode())) | {"model": "fake-model", "stream": True}
    with httpx.Client(base_url=gateway.base_url, timeout=20) as c, c.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        received = b"".join(r.iter_bytes()).decode()
        rid = r.headers["x-request-id"]
    gateway.call(gateway.services.sink.flush())
    engine = sa.create_engine(to_sync_url(sqlite_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            logged = conn.execute(sa.text("SELECT response_body FROM requests WHERE id = :id"), {"id": rid}).scalar()
    finally:
        engine.dispose()
    first, closing = {"chat": ("data: {", "data: [DONE]"), "messages": ("event: message_start", "message_stop"),
                      "responses": ("event: response.created", "response.completed")}[api]
    assert received.startswith(first) and (closing in received) == ("cut" not in text)
    assert logged == received
