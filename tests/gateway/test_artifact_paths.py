"""The admin API's artifact endpoints load only from the configured artifacts directory.

Any bad path (absent, outside, escaping through a symlink, a manifest naming a file outside the
artifact's folder) gets one and the same 400 answer, so a caller learns nothing about what exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from backends.fake_provider import FakeProviderThread
from router.features import DENSE_FEATURE_NAMES
from router.offline.artifacts import save_verifier
from router.verifier import ANSWER_FEATURE_NAMES, AnswerVerifier
from service.artifact_slots import ArtifactPathRefused, confined_path
from tests.support.gateway import dep, settings
from tests.support.harness import running_gateway


def _verifier(out: Path) -> Path:
    k = len(ANSWER_FEATURE_NAMES) + len(DENSE_FEATURE_NAMES)
    save_verifier(
        AnswerVerifier(model="m", mean=np.zeros(k), scale=np.ones(k), coef=np.zeros(k), intercept=0.0), out
    )
    return out


def test_confined_path_accepts_directories_inside_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "arts"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    (root / "file").write_text("x")
    assert confined_path(root, "a") == str((root / "a").resolve())
    assert confined_path(root, str(root / "a")) == str((root / "a").resolve())
    for bad in ("missing", "../outside", str(tmp_path / "outside"), "link", "file", ".", "", "/", "a\0b"):
        with pytest.raises(ArtifactPathRefused):
            confined_path(root, bad)


def test_admin_artifact_endpoints_refuse_every_bad_path_with_one_neutral_error(
    sqlite_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "arts"
    _verifier(root / "good")
    _verifier(tmp_path / "outside")  # a valid artifact, but outside the artifacts directory
    (root / "escape").symlink_to(tmp_path / "outside")
    absolute = _verifier(root / "absolute-file")
    manifest = json.loads((absolute / "manifest.json").read_text())
    manifest["files"]["/etc/passwd"] = "0" * 64
    (absolute / "manifest.json").write_text(json.dumps(manifest))
    escaping_file = _verifier(root / "escaping-file")
    (escaping_file / "arrays.safetensors").unlink()
    (escaping_file / "arrays.safetensors").symlink_to(tmp_path / "outside" / "arrays.safetensors")
    with FakeProviderThread() as fake:
        cfg = settings(
            tmp_path,
            sqlite_url,
            [dep("cheap", "cheap-model", fake.base_url)],
            router={"artifacts_dir": str(root)},
        )
        with running_gateway(cfg) as gw:
            bodies = []
            for endpoint in ("verifiers", "artifacts"):
                for path in (
                    "missing",
                    str(root / "missing"),
                    "../outside",
                    str(tmp_path / "outside"),
                    "escape",
                    "absolute-file",
                    "escaping-file",
                    "/etc",
                    "/etc/passwd",
                    "..",
                    "good/../../outside",
                ):
                    r = httpx.post(f"{gw.base_url}/admin/api/router/{endpoint}", json={"path": path})
                    assert r.status_code == 400, (endpoint, path, r.text)
                    bodies.append(r.json())
            assert [b for b in bodies if b != bodies[0]] == []
            err = bodies[0]["error"]
            assert err["param"] == "path" and "artifacts_dir" in err["message"]
            ok = httpx.post(f"{gw.base_url}/admin/api/router/verifiers", json={"path": "good"})
            assert ok.status_code == 201 and ok.json()["models"] == ["m"]
            ok = httpx.post(f"{gw.base_url}/admin/api/router/verifiers", json={"path": str(root / "good")})
            assert ok.status_code == 201
