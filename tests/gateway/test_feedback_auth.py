"""Feedback comes only from the key that made the request (or the admin), with a bounded set of sources."""

from __future__ import annotations

from pathlib import Path

import httpx
import sqlalchemy as sa

from backends.fake_provider import FakeProviderThread
from requestlog.migrate import upgrade
from requestlog.urls import to_sync_url
from tests.support.gateway import gateway_settings
from tests.support.harness import running_gateway

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_feedback_from_another_key_is_403_and_new_sources_are_bounded(
    fake_provider: FakeProviderThread, pg_url: str, tmp_path: Path
) -> None:
    upgrade(pg_url)
    settings = gateway_settings(
        fake_provider.base_url,
        pg_url,
        tmp_path,
        require_keys=True,
        admin_token="adm-secret",
        feedback_max_sources=3,
    )
    admin = {"authorization": "Bearer adm-secret"}
    with running_gateway(settings) as gw, httpx.Client(base_url=gw.base_url, timeout=10) as client:
        owner, other = (
            {
                "authorization": "Bearer "
                + client.post("/admin/api/keys", json={"name": n}, headers=admin).json()["key"]
            }
            for n in ("owner", "other")
        )
        rid = client.post("/v1/chat/completions", json=BODY, headers=owner).headers["x-request-id"]

        forged = client.post("/v1/feedback", json={"request_id": rid, "score": 0.0}, headers=other)
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "not_request_owner"

        assert (
            client.post("/v1/feedback", json={"request_id": rid, "score": 1.0}, headers=owner).status_code
            == 201
        )
        again = client.post("/v1/feedback", json={"request_id": rid, "score": 1.0}, headers=owner)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        statuses = [
            client.post(
                "/v1/feedback", json={"request_id": rid, "score": 0.5, "source": f"s{i}"}, headers=owner
            ).status_code
            for i in range(10)
        ]
        assert statuses == [201, 201] + [409] * 8
        r = client.post("/v1/feedback", json={"request_id": rid, "score": 0.5, "source": "s9"}, headers=admin)
        assert r.status_code == 409 and r.json()["error"]["param"] == "source"
        assert (
            client.post(
                "/v1/feedback", json={"request_id": rid, "score": 0.2, "source": "s0"}, headers=admin
            ).status_code
            == 200
        )  # the admin may judge; a known source stays idempotent

    engine = sa.create_engine(to_sync_url(pg_url))
    with engine.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM feedback WHERE request_id = :r"), {"r": rid}
        ).scalar_one()
    engine.dispose()
    assert n == 3


def test_feedback_text_postgres_cannot_store_is_the_callers_400_not_a_503_to_retry(
    fake_provider: FakeProviderThread, pg_url: str, tmp_path: Path
) -> None:
    upgrade(pg_url)
    settings = gateway_settings(fake_provider.base_url, pg_url, tmp_path, admin_token="adm-secret")
    admin = {"authorization": "Bearer adm-secret"}
    with running_gateway(settings) as gw, httpx.Client(base_url=gw.base_url, timeout=10, headers=admin) as client:
        rid = client.post("/v1/chat/completions", json=BODY).headers["x-request-id"]
        for body, param in (({"request_id": rid, "score": 1.0, "source": "a\x00b"}, "source"),
                            ({"request_id": rid, "score": 1.0, "comment": "\x00"}, "comment"),
                            ({"request_id": "x\x00", "score": 1.0}, "request_id")):
            r = client.post("/v1/feedback", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert client.post("/v1/feedback", json={"request_id": rid, "score": 1.0}).status_code == 201
