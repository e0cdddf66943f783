"""Value types that several layers share: a deployment's configuration, retry settings, and what the
router may know about a request.

They are plain data (pydantic models and dataclasses) with no behaviour beyond validation, and this
module imports nothing of the project, so `router/`, `backends/`, `policies/`, `service/` and
`gateway/` can all use them without importing one another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class Pricing(BaseModel):
    """USD per million tokens. None means: take it from litellm's cost map (a ``litellm`` deployment only),
    else 0."""

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
        min_length=1,
        description="litellm model string (e.g. 'anthropic/claude-3-5-haiku') or upstream model id",
    )
    # api_key_env comes before api_base: the api_base check reads it (`_http_url`)
    api_key_env: str | None = Field(default=None, description="name of the env var holding the upstream key")
    api_base: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    stream_idle_timeout_s: float = Field(default=60.0, gt=0)
    context_window: int = Field(default=8192, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    pricing: Pricing = Field(default_factory=Pricing)
    capabilities: list[
        Literal["chat", "completion", "embedding", "tools", "json_mode", "vision", "logprobs", "responses"]
    ] = Field(
        default_factory=lambda: ["chat", "completion"],
        description="what the deployment serves; 'responses': its upstream speaks OpenAI's Responses API "
        "(/v1/responses), so Responses requests are passed through instead of translated to chat",
    )
    tags: list[str] = Field(default_factory=list)
    max_concurrency: int | None = Field(default=None, gt=0)
    local_process: Literal["auto", "inprocess", "subprocess"] = Field(
        default="auto",
        description="provider 'local': run the engine in the gateway's process or in its own server "
        "process (auto: its own on CUDA, in-process on the CPU)",
    )
    local_device: str = Field(default="cpu", description="provider 'local': torch device of the model")
    local_dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Checked here, at start: both upstream clients (aiohttp for openai_compatible, litellm's
        HTTP clients) only speak HTTP(S) to a host, so anything else would fail every request. A
        deployment that sends its key (``api_key_env``) cannot also carry a user and password in its
        ``api_base``: both are the Authorization header, and the HTTP client refuses every request that
        has both. (A field check, not a model one, so it is reported beside every other field's error.)"""
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            # reading .port raises ValueError for a port that is not a number from 0 to 65535
            valid = (parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
                     and not any(c.isspace() for c in v))
        except ValueError:
            valid = False
        if not valid:
            raise ValueError("expected an http:// or https:// URL with a host, e.g. http://HOST:8000/v1")
        key_env = info.data.get("api_key_env")
        if key_env and (parts.username or parts.password):
            raise ValueError(f"carries credentials (USER:PASSWORD@) and the deployment has api_key_env ({key_env!r}); "
                             "both would be the Authorization header: keep one of them")
        return v


class RetrySettings(BaseModel):
    """Retries of one request, across all its attempts (a policy's ``retry`` block)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_attempts: int = Field(default=4, ge=1, description="attempts in total, all deployments")
    max_attempts_per_deployment: int = Field(default=2, ge=1)
    backoff_base_s: float = Field(default=0.25, ge=0)
    backoff_max_s: float = Field(default=4.0, ge=0)
    jitter: Literal["full", "equal", "none"] = "full"
    honor_retry_after: bool = True
    max_retry_after_s: float = Field(default=10.0, ge=0, description="longer Retry-After: fall back instead")
    attempt_timeout_s: float | None = Field(default=None, gt=0, description="None: the deployment's timeout")
    deadline_s: float = Field(default=120.0, gt=0)


@dataclass(slots=True)
class RequestFeatures:
    """What the router may know about a request: cheap to compute, no I/O, loggable.

    ``capabilities`` are those the request *needs* (``tools`` when it sends tools, ``json_mode``
    for response_format json, ``vision`` for image parts); the endpoint's own capability
    (``chat``/``completion``/``embedding``) is added by `decide` from ``endpoint``.
    """

    prompt_tokens: int
    max_tokens: int | None = None
    capabilities: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    key_id: str | None = None
    user: str | None = None
    team: str | None = None
    prompt_text: str = ""
    endpoint: str = "chat"
    choices: int = 1  # completions one call generates (n, or best_of when larger), each up to max_tokens
    end_user: str | None = None  # the body's `user`: its budget applies on top of the key's (never instead)
    # the fields the caller set the output limit and the prompt in: a refusal names what was sent
    output_param: str = "max_tokens"
    prompt_param: str = "messages"
