"""Deployments shaped like a real setup, for router tests (pure values, no servers)."""

from __future__ import annotations

from datetime import UTC, datetime

from common.types import DeploymentConfig, Pricing


def dep(name: str, model: str | None = None, *, pin: float, pout: float, ctx: int = 128_000,
        provider: str = "litellm", caps: tuple[str, ...] = ("chat", "completion", "tools", "json_mode"),
        tags: tuple[str, ...] = ("external",), **kw) -> DeploymentConfig:
    return DeploymentConfig(
        name=name, model=model or name, provider=provider, upstream_model=f"up/{name}", context_window=ctx,
        pricing=Pricing(input_per_mtok=pin, output_per_mtok=pout), capabilities=list(caps), tags=list(tags), **kw,
    )


def make_deployments() -> list[DeploymentConfig]:
    """Eight deployments shaped like a real setup: two of gpt-4o, cheap and strong, and a local model."""
    vis = ("chat", "completion", "tools", "json_mode", "vision")
    return [
        dep("gpt-4o-openai", "gpt-4o", pin=2.5, pout=10, caps=vis),
        dep("gpt-4o-azure", "gpt-4o", pin=2.5, pout=10, caps=vis),
        dep("gpt-4o-mini", pin=0.15, pout=0.6, caps=vis),
        dep("claude-3-5-sonnet", pin=3, pout=15, ctx=200_000),
        dep("claude-3-5-haiku", pin=0.8, pout=4, ctx=200_000),
        dep("llama-3-70b", pin=0.6, pout=0.6, ctx=8192, provider="openai_compatible"),
        dep("mistral-large", pin=2, pout=6, ctx=32_000),
        dep("jamba-local", pin=0, pout=0, ctx=16_384, provider="local", caps=("chat", "completion"),
            tags=("local",), max_concurrency=4),
    ]


NOON = datetime(2024, 5, 15, 12, 0, tzinfo=UTC)  # a Wednesday
