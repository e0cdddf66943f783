"""``local_process: subprocess``: the gateway serves the local model from a child `hybridgate local-model
serve` process on a loopback port (the GPU default), reached through the OpenAI-compatible backend; the
official openai SDK gets the same greedy answer as in-process, the router sees the server's load, and
the child stops with the gateway."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

import local_model
from backends.local_backend import serves_in_subprocess
from backends.local_subprocess import LocalServerProcess, SubprocessLocalBackend
from common.types import DeploymentConfig
from gateway.config import Settings
from tests.support.engine import build_checkpoint
from tests.support.harness import running_gateway


def test_sdk_reaches_the_local_model_in_its_own_process(tmp_path: Path, sqlite_url: str) -> None:
    ckpt = tmp_path / "jamba"
    build_checkpoint(ckpt)
    deployment = {
        "name": "jamba-local",
        "model": "jamba",
        "provider": "local",
        "upstream_model": str(ckpt),
        "local_process": "subprocess",
        "context_window": 512,
        "max_concurrency": 4,
        "timeout_s": 60,
        "capabilities": ["chat", "completion"],
        "pricing": {"input_per_mtok": 0.0, "output_per_mtok": 0.0},
    }
    settings = Settings(
        database_url=sqlite_url,
        deployments=[deployment],
        log={"spool_dir": str(tmp_path / "spool"), "batch_max_ms": 10},
        local_model={"enabled": False},
    )  # type: ignore[arg-type]
    messages = [{"role": "user", "content": "state space models"}]
    lm = local_model.load(ckpt)
    assert lm.tokenizer is not None
    ids = lm.tokenizer.apply_chat_template(messages, tokenize=True)
    expected = lm.tokenizer.decode(lm.greedy(ids, 6))
    with running_gateway(settings) as gw:
        backend = gw.services.backends["jamba-local"]
        assert isinstance(backend, SubprocessLocalBackend) and backend.server.running
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="sk-unused", max_retries=0)
        resp = client.chat.completions.create(model="jamba", messages=messages, max_tokens=6, temperature=0)  # type: ignore[arg-type]
        assert resp.choices[0].message.content == expected
        assert resp.usage is not None and resp.usage.prompt_tokens == len(ids)
        chunks = list(
            client.chat.completions.create(
                model="jamba",
                messages=messages,  # type: ignore[arg-type]
                max_tokens=6,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
        deadline = time.monotonic() + 10
        load = backend.load_signals()  # polled from /health once a second: wait for a poll after the calls
        while load.get("free_slots") != 4 and time.monotonic() < deadline:
            time.sleep(0.05)
            load = backend.load_signals()
        assert load["free_slots"] == load["total_ssm_slots"] == 4 and load["queue_depth"] == 0
        proc = backend.server.proc
        assert proc is not None
    assert proc.poll() is not None, "the model server stops with the gateway"
    assert not backend.server.running


def test_auto_runs_the_engine_in_its_own_process_on_cuda_only(sqlite_url: str) -> None:
    def dep(**kw: object) -> DeploymentConfig:
        return DeploymentConfig(name="l", model="m", provider="local", upstream_model="shipped", **kw)  # type: ignore[arg-type]

    assert not serves_in_subprocess(dep())
    assert serves_in_subprocess(dep(local_device="cuda:0"))
    assert serves_in_subprocess(dep(local_process="subprocess"))
    assert not serves_in_subprocess(dep(local_process="inprocess", local_device="cuda"))
    settings = Settings(database_url=sqlite_url, local_model={"process": "subprocess", "device": "cpu"})  # type: ignore[arg-type]
    (local,) = [d for d in settings.all_deployments() if d.provider == "local"]
    assert local.local_process == "subprocess" and local.local_device == "cpu"


def test_a_server_that_cannot_start_reports_why(tmp_path: Path) -> None:
    cfg = DeploymentConfig(
        name="l", model="m", provider="local", upstream_model="x", local_process="subprocess"
    )
    server = LocalServerProcess.for_deployment(cfg, tmp_path / "missing")
    with pytest.raises(RuntimeError, match="exited with 2.*missing"):
        server.start(startup_timeout_s=60)
    assert not server.running
