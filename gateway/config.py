"""Gateway settings: one YAML file plus environment overrides.

Precedence (highest first): environment variables (`HYBRIDGATE_…`, nested with `__`), the YAML
file (`HYBRIDGATE_CONFIG` or `./hybridgate.yaml`), then the embedded defaults below. The
defaults are what `make run` serves: a SQLite log in the working directory, in-process state,
and the local model on the CPU, so a first request works without any external service.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from common.types import DeploymentConfig

DEFAULT_CONFIG_FILE = "hybridgate.yaml"


class LogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bodies: Literal["full", "hashed", "none"] = Field(
        default="hashed", description="store request/response bodies in full, only their hash, or nothing"
    )
    spool_dir: str = "./var/spool"
    batch_max_rows: int = Field(default=500, gt=0)
    batch_max_ms: int = Field(default=100, gt=0)
    durability: Literal["off", "batch", "always"] = Field(
        default="batch",
        description="request log write-ahead log: 'always' answers only once the row is fsynced to "
        "the local spool; 'batch' group-commits every wal_commit_ms without waiting (a crash loses at "
        "most that window); 'off' keeps rows in memory until the database has them")
    wal_commit_ms: float = Field(
        default=5.0, ge=0, le=1000,
        description="WAL group-commit window of 'batch' ('always' commits back to back: no added wait)")
    retention_days: float | None = Field(
        default=None, gt=0,
        description="delete requests (with their attempts and feedback) older than this; None = keep all")


class LocalModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="serve the shipped local model in-process")
    checkpoint: str | None = Field(default=None, description="checkpoint dir; None = the one shipped in the repo")
    model_name: str = "hybridgate-local"
    device: str = "cpu"
    dtype: str = "float32"
    context_window: int = Field(default=2048, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0, description="running sequences; None = engine default")
    process: Literal["auto", "inprocess", "subprocess"] = Field(
        default="auto",
        description="where the engine runs: in the gateway's process, or in its own `hybridgate local-model "
        "serve` process on a loopback port (auto: its own on CUDA, in-process on the CPU)",
    )


class BreakerSettings(BaseModel):
    """Circuit breaker defaults for every deployment (see router/breaker.py)."""

    model_config = ConfigDict(extra="forbid")

    window_s: float = Field(default=30.0, gt=0)
    min_requests: int = Field(default=10, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    consecutive_failures: int = Field(default=5, ge=0)
    latency_ms: float | None = Field(default=None, gt=0)
    cooldown_s: float = Field(default=30.0, gt=0)
    half_open_probes: int = Field(default=1, ge=1)


class BudgetSettings(BaseModel):
    """A spending cap for a user or a team (key budgets live with the key)."""

    model_config = ConfigDict(extra="forbid")

    scope: str = Field(pattern=r"^(user|team):.+", description="'user:<name>' or 'team:<name>'")
    limit_usd: float = Field(ge=0)
    period: Literal["day", "week", "month", "total"] = "month"


class HttpSettings(BaseModel):
    """Limits of the HTTP edge (gateway/http_edge.py): what one connection may cost the server."""

    model_config = ConfigDict(extra="forbid")

    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="request line + headers; larger: 431")
    max_headers: int = Field(default=100, ge=1, description="header fields per request; more: 431")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="the request head must arrive within this (408); idle new sockets close")
    body_timeout_s: float = Field(default=60.0, gt=0, description="the whole body must arrive within this (408)")
    keepalive_timeout_s: float = Field(default=5.0, gt=0, description="idle keep-alive connections close after this")
    max_connections: int = Field(
        default=1000, ge=1,
        description="open connections per process; at the cap the longest-idle one makes room, else 503")


class RouterSettings(BaseModel):
    """Learned parts of routing: the classifier artifact policies' `classifier` selectors use, and the
    answer verifiers cascades may judge with."""

    model_config = ConfigDict(extra="forbid")

    artifact: str | None = Field(default=None, description="trained router artifact dir (hybridgate router train)")
    artifacts_dir: str = Field(
        default="artifacts",
        description="the only directory (relative to the working directory, or absolute) the admin API "
                    "loads artifacts from: POST /admin/api/router/artifacts and /verifiers refuse any other path")
    model_aliases: dict[str, str] = Field(
        default_factory=dict, description="classifier model name -> gateway model name")
    verifiers: dict[str, str] = Field(
        default_factory=dict,
        description="name -> answer-verifier artifact dir (hybridgate router train-verifier); a policy's "
                    "escalation uses one with score 'verifier' (name 'default') or 'verifier:<name>'")
    bandit_store: Literal["database", "redis", "process"] = Field(
        default="database",
        description="where bandit statistics are shared: the database (durable), Redis (opt-in; lost with an "
                    "unpersisted Redis), or per process")


class Settings(BaseSettings):
    """Everything the app factory needs. Validated at start: a bad file fails loudly, naming the field."""

    model_config = SettingsConfigDict(
        env_prefix="HYBRIDGATE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    database_url: str = "sqlite+aiosqlite:///./hybridgate.db"
    redis_url: str | None = Field(default=None, description="shared state; None = in-process state")
    redis_prefix: str = "hg:"
    redis_timeout_s: float = Field(default=0.25, gt=0, description="per command; slower = use local state for now")
    redis_connect_timeout_s: float = Field(default=1.0, gt=0)
    lease_ttl_s: float = Field(
        default=10.0, ge=1,
        description="how long a concurrency lease or budget hold in Redis lasts unless its running request renews "
                    "it (every third of this): what a dead process or a lost release can hold up")
    require_keys: bool | None = Field(
        default=None,
        description="None = require gateway keys unless bound to loopback; True/False to force",
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    http: HttpSettings = Field(default_factory=HttpSettings)
    default_model: str | None = Field(
        default=None, description="model or policy that serves a request for the model `default` (None: `default` is unknown)")
    policies_dir: str | None = Field(
        default=None, description="policy YAML files stored (as new versions when changed) at start")
    policy_reload_s: float = Field(
        default=1.0, gt=0,
        description="how often the policy store is polled for changes (half as often while Redis pub/sub pushes them)")
    budget_reconcile_s: float = Field(
        default=15.0, gt=0,
        description="how often budget accounts in use are caught up with the spend in the request log "
                    "(what other processes, or this one during a Redis outage, spent)")
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    budgets: list[BudgetSettings] = Field(default_factory=list, description="user and team budgets")
    admin_token: str | None = Field(default=None, description="bearer token for /admin; None = loopback only")
    metrics_token: str | None = Field(
        default=None,
        description="bearer token for /metrics and /readyz when keys are required; None = loopback only then")
    feedback_max_sources: int = Field(
        default=8, ge=1, le=1000, description="distinct feedback sources one request accepts (/v1/feedback)")
    log: LogSettings = Field(default_factory=LogSettings)
    local_model: LocalModelSettings = Field(default_factory=LocalModelSettings)
    deployments: list[DeploymentConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_deployment_names(self) -> Settings:
        seen: set[str] = set()
        for d in self.deployments:
            if d.name in seen:
                raise ValueError(f"deployments: duplicate name {d.name!r}")
            seen.add(d.name)
        return self

    @model_validator(mode="after")
    def _bandit_store_reachable(self) -> Settings:
        if self.router.bandit_store == "redis" and not self.redis_url:
            raise ValueError("router.bandit_store: 'redis' needs redis_url")
        return self

    def all_deployments(self) -> list[DeploymentConfig]:
        """Configured deployments plus the embedded local model when it is enabled and not configured."""
        deps = list(self.deployments)
        lm = self.local_model
        if lm.enabled and not any(d.provider == "local" for d in deps):
            deps.insert(0, DeploymentConfig(
                name="local", model=lm.model_name, provider="local", upstream_model=lm.checkpoint or "shipped",
                context_window=lm.context_window, max_concurrency=lm.max_concurrency, timeout_s=300,
                local_process=lm.process, local_device=lm.device, local_dtype=lm.dtype,  # type: ignore[arg-type]
                pricing={"input_per_mtok": 0.0, "output_per_mtok": 0.0},  # type: ignore[arg-type]
                capabilities=["chat", "completion", "logprobs"], tags=["local"]))
        return deps

    @property
    def loopback(self) -> bool:
        return self.host in {"127.0.0.1", "localhost", "::1"} or self.host.startswith("127.")

    @property
    def keys_required(self) -> bool:
        return (not self.loopback) if self.require_keys is None else self.require_keys

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


class ConfigError(Exception):
    """A config file or override is invalid; the message names the field."""


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._data = _read_yaml(Path(os.environ.get("HYBRIDGATE_CONFIG", DEFAULT_CONFIG_FILE)))

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Load settings; `config_file` wins over HYBRIDGATE_CONFIG. Raises ConfigError with field names."""
    old = os.environ.get("HYBRIDGATE_CONFIG")
    if config_file is not None:
        if not Path(config_file).exists():
            raise ConfigError(f"config file not found: {config_file}")
        os.environ["HYBRIDGATE_CONFIG"] = config_file
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from exc
    finally:
        if config_file is not None:
            if old is None:
                os.environ.pop("HYBRIDGATE_CONFIG", None)
            else:
                os.environ["HYBRIDGATE_CONFIG"] = old
