"""`hybridgate demo-traffic` against a gateway configured by its own --write-config: the workload
goes through, gets feedback, and the console's dashboards have data right after."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from gateway import demo_traffic
from gateway.config import Settings
from tests.support.harness import running_gateway
from tests.support.net import free_ports


def test_demo_traffic_fills_the_dashboards(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = free_ports(len(demo_traffic.MODELS))
    cfg = tmp_path / "demo.yaml"
    assert (
        demo_traffic.main(
            ["--write-config", str(cfg), "--database-url", sqlite_url, "--base-port", str(base)]
        )
        == 0
    )
    data = yaml.safe_load(cfg.read_text())
    data["log"]["spool_dir"] = str(tmp_path / "spool")
    with running_gateway(Settings(**data)) as gw:
        capsys.readouterr()
        rc = demo_traffic.main(
            [
                "--gateway",
                gw.base_url,
                "--requests",
                "60",
                "--concurrency",
                "4",
                "--exit",
                "--json",
                "--base-port",
                str(base),
            ]
        )
        assert rc == 0
        summary = json.loads(capsys.readouterr().out)
        per_model = summary["per_model"]
        assert sum(m["requests"] for m in per_model.values()) == 60
        assert len([m for m in per_model if m.startswith("demo-")]) >= 2
        assert sum(m["feedback"] for m in per_model.values()) > 20
        gw.call(gw.services.sink.flush())
        cq = httpx.get(
            f"{gw.base_url}/admin/api/console/dashboards/cost-quality", params={"range": "1h"}
        ).json()
        models = {row[1]: row for row in cq["rows"] if row[0] == "model"}
        assert sum(row[7] for row in models.values()) == sum(m["feedback"] for m in per_model.values())
        policies = {row[1] for row in cq["rows"] if row[0] == "policy"}
        assert {"demo-cheapest", "demo-bandit"} <= policies
