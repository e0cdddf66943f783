"""Health, readiness and metrics endpoints; the keys CLI stores only hashes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from gateway import cli
from tests.support.harness import GatewayThread


def test_healthz_readyz_metrics(gateway: GatewayThread) -> None:
    assert httpx.get(gateway.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.base_url + "/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["database"] is True
    httpx.post(gateway.base_url + "/v1/chat/completions",
               json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})
    text = httpx.get(gateway.base_url + "/metrics").text
    for name in ("hybridgate_requests_total", "hybridgate_request_latency_seconds_bucket",
                 "hybridgate_tokens_total", "hybridgate_cost_usd_total", "hybridgate_upstream_attempts_total"):
        assert name in text


def hybridgate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The `hybridgate` command run in this process (its exit code, stdout, stderr): each CLI process
    would import the whole gateway again; the exit path of `python -m gateway.cli` is tested below."""
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_cli_create_list_revoke_stores_only_hashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "k.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database_url: sqlite+aiosqlite:///{db}\nlocal_model: {{enabled: false}}\n")
    hg = ("--config", str(cfg))
    assert hybridgate(capsys, *hg, "migrate")[0] == 0
    code, out, _ = hybridgate(capsys, *hg, "keys", "create", "ci", "--models", "a,b", "--rpm", "10")
    created = json.loads(out)
    assert code == 0 and created["key"].startswith("hg-") and created["allowed_models"] == ["a", "b"]
    listed = json.loads(hybridgate(capsys, *hg, "keys", "list")[1])
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM api_keys")) for v in row)
    engine.dispose()
    assert created["key"] not in dump  # only the hash is stored
    assert hybridgate(capsys, *hg, "keys", "revoke", created["id"])[0] == 0
    assert hybridgate(capsys, *hg, "keys", "revoke", created["id"])[0] == 1


def test_keys_cli_refuses_the_limits_the_admin_api_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's float() reads "nan" and no type refuses -3: the admin API's own checks apply."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database_url: sqlite+aiosqlite:///{tmp_path / 'k.db'}\nlocal_model: {{enabled: false}}\n")
    hg = ("--config", str(cfg))
    assert hybridgate(capsys, *hg, "migrate")[0] == 0
    for flag, value, field in (("--budget-usd", "nan", "budget_usd"), ("--rpm", "-3", "rpm_limit")):
        code, out, err = hybridgate(capsys, *hg, "keys", "create", "ci", flag, value)
        assert code == 2 and out == "" and err.startswith(f"invalid {field}:"), (code, out, err)
    assert json.loads(hybridgate(capsys, *hg, "keys", "list")[1]) == []


def test_bad_config_fails_loudly_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("port: nope\nlog: {bodies: everything}\n")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(cfg), "migrate"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "port" in r.stderr and "log.bodies" in r.stderr


def test_redis_bandit_store_without_redis_fails_loudly_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("router: {bandit_store: redis}\n")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(cfg), "migrate"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "router.bandit_store" in r.stderr and "redis_url" in r.stderr


def test_cli_subcommand_groups_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = hybridgate(capsys, "bench")
    assert code == 2 and "gateway-overhead" in err
    code, _, err = hybridgate(capsys, "router")
    assert code == 2 and "train" in err
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "local-model"], capture_output=True, text=True)
    assert "serve" in r.stdout + r.stderr
