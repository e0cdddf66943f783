"""POST /admin/api/policies/{name}/calibrate: the cost weight that sends a target share of real prompts
to one model, with the gateway's own scorer, prices and policy; bad requests get OpenAI-shaped errors."""

from __future__ import annotations

from pathlib import Path

import httpx

from backends.fake_provider import FakeProviderThread
from router.offline.artifacts import save_artifact
from router.offline.datasets import read_csv
from router.offline.train import TrainConfig, train_classifier
from tests.support.gateway import dep, settings
from tests.support.harness import running_gateway
from tests.support.verifier_data import STRONG, WEAK, arithmetic_problems, write_routellm

SMART = """
name: smart
selector: {type: classifier, scorer: default, threshold: 0.0, lambda: 0.5}
"""


def test_calibration_finds_the_weight_for_a_target_strong_share(sqlite_url: str, tmp_path: Path) -> None:
    data = write_routellm(tmp_path / "toy.csv", arithmetic_problems(200))
    save_artifact(train_classifier(read_csv(data), TrainConfig()), tmp_path / "clf")
    prompts = [p for p, *_ in arithmetic_problems(300, seed=7)]
    with FakeProviderThread() as fp:
        deps = [dep("cheap", "cheap-model", fp.base_url, pricing={"input_per_mtok": 1, "output_per_mtok": 1}),
                dep("strong", "strong-model", fp.base_url, pricing={"input_per_mtok": 20, "output_per_mtok": 20})]
        cfg = settings(tmp_path, sqlite_url, deps, router={
            "artifact": str(tmp_path / "clf"), "model_aliases": {WEAK: "cheap-model", STRONG: "strong-model"}})
        with running_gateway(cfg) as gw:
            url = gw.base_url + "/admin/api/policies/smart"
            assert httpx.put(url, content=SMART, headers={"content-type": "application/yaml"}).status_code == 201
            r = httpx.post(url + "/calibrate", json={"prompts": prompts, "model": "strong-model", "share": 0.25},
                           timeout=60)
            assert r.status_code == 200, r.text
            cal = r.json()
            assert cal["n"] == 300 and cal["policy"] == "smart" and cal["version"] == 1
            assert cal["share"] <= 0.25 < cal["share_at_lambda_0"] and cal["lambda"] > 0
            # the weight does on live traffic what the calibration said, decision for decision
            spec = SMART.replace("lambda: 0.5", f"lambda: {cal['lambda']}")
            assert httpx.put(url, content=spec, headers={"content-type": "application/yaml"}).status_code == 201
            with httpx.Client(base_url=gw.base_url) as client:
                served = [client.post("/v1/chat/completions", json={
                    "model": "smart", "messages": [{"role": "user", "content": p}]}).headers["x-hybridgate-model"]
                    for p in prompts]
            assert round(served.count("strong-model") / len(prompts), 4) == cal["share"]

            for body, param in (({"prompts": [], "model": "strong-model", "share": 0.2}, "prompts"),
                                ({"prompts": ["a"], "share": 0.2}, "model"),
                                ({"prompts": ["a"], "model": "strong-model", "share": 2}, "share")):
                bad = httpx.post(url + "/calibrate", json=body)
                assert bad.status_code == 400 and bad.json()["error"]["param"] == param
            assert httpx.post(gw.base_url + "/admin/api/policies/nope/calibrate",
                              json={"prompts": ["a"], "model": "m", "share": 0.1}).status_code == 404
            fixed = "name: plain\nselector: {type: fixed}\n"
            assert httpx.put(gw.base_url + "/admin/api/policies/plain", content=fixed,
                             headers={"content-type": "application/yaml"}).status_code == 201
            wrong = httpx.post(gw.base_url + "/admin/api/policies/plain/calibrate",
                               json={"prompts": ["a"], "model": "strong-model", "share": 0.1})
            assert wrong.status_code == 400 and "classifier" in wrong.json()["error"]["message"]
