"""The deployment files stay valid: compose parses, its config file loads as gateway Settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gateway.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_has_the_four_services_and_valid_gateway_config() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert {"postgres", "redis", "gateway", "local-model"} <= set(compose["services"])
    s = load_settings(str(ROOT / "deploy" / "hybridgate.compose.yaml"))
    assert s.keys_required and {d.model for d in s.deployments} >= {"hybridgate-local"}


def test_example_config_loads() -> None:
    s = load_settings(str(ROOT / "hybridgate.example.yaml"))
    assert s.deployments and s.log.bodies == "hashed"


def _setting_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of ``model`` (nested settings sections as ``section.key``), deployments' aside: their keys
    are per deployment and documented with the deployments."""
    names = []
    for name, f in model.model_fields.items():
        if name == "deployments":
            continue
        names.append(prefix + name)
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            names += _setting_names(f.annotation, f"{prefix}{name}.")
    return names


def test_example_config_documents_every_setting() -> None:
    """The README promises every key in `hybridgate.example.yaml` (set or commented out)."""
    text = (ROOT / "hybridgate.example.yaml").read_text()
    missing = [n for n in _setting_names(Settings)
               if not re.search(rf"(^|[\s{{,#]){re.escape(n.rpartition('.')[2])}:", text, re.M)]
    assert not missing, f"not in hybridgate.example.yaml: {missing}"


def _compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) if present, else the standalone `docker-compose`."""
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_validates() -> None:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    r = subprocess.run([*cmd, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
