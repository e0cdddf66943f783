"""Deployment configuration: one upstream model endpoint the gateway can send calls to."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Pricing(BaseModel):
    """USD per million tokens. None means: take it from litellm's cost map, else 0."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float | None = Field(default=None, ge=0)
    output_per_mtok: float | None = Field(default=None, ge=0)


class DeploymentConfig(BaseModel):
    """One model served by one upstream.

    `model` is the name clients (and policies) use; several deployments may share it, in which
    case they are alternatives for the router. `upstream_model` is what the upstream calls it.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="unique deployment name, e.g. 'gpt4o-azure-eu'")
    model: str = Field(min_length=1, description="public model name clients ask for")
    provider: Literal["litellm", "openai_compatible", "local"] = "openai_compatible"
    upstream_model: str = Field(
        min_length=1, description="litellm model string (e.g. 'anthropic/claude-3-5-haiku') or upstream model id"
    )
    api_base: str | None = None
    api_key_env: str | None = Field(default=None, description="name of the env var holding the upstream key")
    timeout_s: float = Field(default=60.0, gt=0)
    stream_idle_timeout_s: float = Field(default=60.0, gt=0)
    context_window: int = Field(default=8192, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    pricing: Pricing = Field(default_factory=Pricing)
    capabilities: list[Literal["chat", "completion", "embedding", "tools", "json_mode", "vision", "logprobs"]] = Field(
        default_factory=lambda: ["chat", "completion"]
    )
    tags: list[str] = Field(default_factory=list)
    max_concurrency: int | None = Field(default=None, gt=0)
