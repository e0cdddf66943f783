"""The gateway routes to an in-process Mamba-2 hybrid (a Bamba checkpoint saved by transformers) the way
it routes to the Jamba one: the official openai SDK gets the model's greedy answer, streamed or not."""

from __future__ import annotations

from pathlib import Path

import openai

import local_model
from gateway.config import Settings
from tests.support.engine import build_checkpoint
from tests.support.harness import running_gateway
from tests.support.mamba2 import save_case


def deployment(name: str, model: str, path: Path) -> dict[str, object]:
    return {
        "name": name,
        "model": model,
        "provider": "local",
        "upstream_model": str(path),
        "context_window": 512,
        "max_concurrency": 4,
        "timeout_s": 60,
        "capabilities": ["chat", "completion"],
        "pricing": {"input_per_mtok": 0.0, "output_per_mtok": 0.0},
    }


def test_sdk_reaches_mamba2_and_jamba_local_models(tmp_path: Path, sqlite_url: str) -> None:
    bamba, jamba = tmp_path / "bamba", tmp_path / "jamba"
    save_case("bamba_gqa", bamba, seed=0)
    build_checkpoint(jamba)
    settings = Settings(
        database_url=sqlite_url,
        deployments=[deployment("bamba-local", "bamba", bamba), deployment("jamba-local", "jamba", jamba)],
        log={"spool_dir": str(tmp_path / "spool"), "batch_max_ms": 10},
        local_model={"enabled": False},
    )  # type: ignore[arg-type]
    messages = [{"role": "user", "content": "state space models"}]
    with running_gateway(settings) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="sk-unused", max_retries=0)
        for model, path in (("bamba", bamba), ("jamba", jamba)):
            lm = local_model.load(path)
            assert lm.tokenizer is not None
            ids = lm.tokenizer.apply_chat_template(messages, tokenize=True)
            expected = lm.tokenizer.decode(lm.greedy(ids, 6))
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=6, temperature=0
            )  # type: ignore[arg-type]
            resp = raw.parse()
            assert raw.headers["x-hybridgate-model"] == model
            assert resp.choices[0].message.content == expected
            assert resp.usage is not None and resp.usage.prompt_tokens == len(ids)
            chunks = list(
                client.chat.completions.create(
                    model=model,
                    messages=messages,
                    max_tokens=6,
                    temperature=0,
                    stream=True,  # type: ignore[arg-type]
                    stream_options={"include_usage": True},
                )
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
