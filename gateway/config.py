"""Gateway settings: one YAML file plus environment overrides.

Precedence (highest first): environment variables (`HYBRIDGATE_…`, nested with `__`), the YAML
file (`HYBRIDGATE_CONFIG` or `./hybridgate.yaml`), then the embedded defaults below. The
defaults are what `make run` serves: a SQLite log in the working directory, in-process state,
and the local model on the CPU, so a first request works without any external service.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from common.types import DeploymentConfig
from common.yamldoc import SafeLoader, duplicate_keys, key_path
from requestlog.urls import to_async_url

DEFAULT_CONFIG_FILE = "hybridgate.yaml"
# a DNS name or IPv4 address as a Host header carries it (lowercased)
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


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
    device: str = Field(default="cpu", description="torch device: cpu, cuda, cuda:N, mps, xpu or xpu:N")
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    context_window: int = Field(default=2048, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0, description="running sequences; None = engine default")
    process: Literal["auto", "inprocess", "subprocess"] = Field(
        default="auto",
        description="where the engine runs: in the gateway's process, or in its own `hybridgate local-model "
        "serve` process on a loopback port (auto: its own on CUDA, in-process on the CPU)",
    )

    @field_validator("device")
    @classmethod
    def _torch_device(cls, v: str) -> str:
        """Checked here: torch would refuse another name only once the weights are being loaded."""
        if not re.fullmatch(r"cpu|mps|(cuda|xpu)(:[0-9]+)?", v):
            raise ValueError("expected cpu, cuda, cuda:N, mps, xpu or xpu:N")
        return v


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
    database_connect_timeout_s: float = Field(
        default=5.0, gt=0,
        description="opening a connection to the log database may take this long (libpq: whole seconds, "
                    "at least 2); a database that does not answer in time counts as down")
    database_timeout_s: float = Field(
        default=10.0, gt=0,
        description="per statement of the gateway's own queries (asyncpg; SQLite: how long one waits for a "
                    "lock); slower = the database counts as down for that call (feedback answers 503, "
                    "background syncs skip a round)")
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
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names (besides localhost, *.localhost, 127.x and [::1]) that callers on this machine "
                    "may address the gateway by when keys are not required (a page whose DNS name was rebound to "
                    "127.0.0.1 uses its own); '*' = any name")
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

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, v: str) -> str:
        """A URL of a database the request log runs on, checked here so a wrong one is a configuration
        error at start, not a traceback from the driver import. The blocking spellings (``sqlite:///``,
        ``postgres://``) that `hybridgate migrate` accepts become their async drivers, which the gateway
        needs. Messages never repeat the URL: it may hold a password."""
        try:
            url = make_url(v)
        except ArgumentError:
            raise ValueError("not a database URL: expected postgresql+asyncpg://USER:PASSWORD@HOST:5432/DB "
                             "or sqlite+aiosqlite:///PATH/TO/FILE.db") from None
        try:
            async_url = to_async_url(url)
        except ValueError:
            raise ValueError(f"unsupported database driver {url.drivername!r}: the request log runs on PostgreSQL "
                             "(postgresql+asyncpg://, postgresql+psycopg://) or SQLite (sqlite+aiosqlite:///)") from None
        if url.drivername in ("sqlite", "sqlite+pysqlite", "postgres"):
            return async_url.render_as_string(hide_password=False)
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        """A URL the Redis client can parse (the client itself fails only when the app is built)."""
        if v:
            from redis.connection import parse_url

            try:
                parse_url(v)
            except ValueError:
                raise ValueError("not a Redis URL: expected redis://[:PASSWORD@]HOST:6379/0, rediss://... "
                                 "or unix:///PATH/TO/redis.sock") from None
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, v: list[str]) -> list[str]:
        """Names as the Host header carries them, compared lowercased and without port or brackets: a URL,
        a port or a pattern would silently never match."""
        out = []
        for i, name in enumerate(v):
            host = name.strip().lower()
            bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if host == "*" or _HOST_NAME.fullmatch(host):
                out.append(host)
                continue
            try:
                out.append(str(ipaddress.IPv6Address(bare)))
            except ValueError:
                raise ValueError(f"entry {i} ({name!r}) is not a host name or IP address: give the name alone, "
                                 "without scheme, port or path (e.g. gateway.internal), or '*' for any") from None
        return out

    @model_validator(mode="after")
    def _unique_deployment_names(self) -> Settings:
        seen: dict[str, int] = {}
        for i, d in enumerate(self.deployments):
            if d.name in seen:
                raise ValueError(f"deployments[{i}].name: duplicate name {d.name!r} (deployments[{seen[d.name]}] "
                                 "has it too); each deployment needs its own name")
            seen[d.name] = i
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


_log = logging.getLogger("hybridgate.config")

# HYBRIDGATE_* variables that other parts read; they are not settings.
_NOT_SETTINGS = {"config", "local_model_dir", "pdl", "moe_fused", "pure_python_features", "routing_data",
                 "preflight"}


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        named = os.environ.get("HYBRIDGATE_CONFIG")
        self._data = _read_yaml(Path(named or DEFAULT_CONFIG_FILE), required=bool(named))

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_yaml(path: Path, *, required: bool = False) -> dict[str, Any]:
    """The file's settings; {} for a missing default file. A file named explicitly must exist, and
    YAML errors say where, not what the line holds (it may hold a secret)."""
    if not path.exists():
        if required:
            raise ConfigError(f"config file not found: {path} (named by HYBRIDGATE_CONFIG)")
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML config file (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        loader = SafeLoader(text)
        try:
            root = loader.get_single_node()
            # YAML keeps the last of a repeated key: the first `database_url:` would be ignored silently
            dups = duplicate_keys(root)
            if dups:
                d = dups[0]
                raise ConfigError(f"{path}: not valid YAML: line {d.line}, column {d.column}: duplicate key "
                                  f"{d.path!r} (first on line {d.first_line}); keep one of them")
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings (key: value lines), "
                          f"not a {'list' if isinstance(data, list) else type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Line, column and problem of a YAML error, without the snippet of the line PyYAML quotes."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "cannot parse"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(exc, "context", None)
    cmark = getattr(exc, "context_mark", None)
    if context and cmark is not None:
        problem += f" ({context} at line {cmark.line + 1}, column {cmark.column + 1})"
    return where + problem


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings model that holds the keys at ``loc`` (list indexes skipped), None below a leaf."""
    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        inner = _inner_model(field.annotation) if field is not None else None
        if inner is None:
            return None
        model = inner
    return model


def _inner_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        if (found := _inner_model(arg)) is not None:
            return found
    return None


_SECRETISH = ("token", "url", "key", "secret", "password")


def _describe(err: Any, overrides: dict[str, Any]) -> str:
    """One line per problem: the key (``deployments[1].timeout_s``), what is wrong, the value given
    where it is a plain one and cannot be a secret, and where it came from when not from the file."""
    loc = tuple(err["loc"])
    key = key_path(loc)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1) if model else []
        msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else
                               " (hybridgate.example.yaml lists every key)")
    elif err["type"] == "missing":
        msg = "required key missing"
    else:
        value = err.get("input")
        leaf = next((str(p) for p in reversed(loc) if not isinstance(p, int)), "")
        if value is None:
            msg += "; got nothing (an empty value)"
        elif isinstance(value, str | int | float | bool) and not any(w in leaf for w in _SECRETISH) \
                and len(repr(value)) <= 80 and not (isinstance(value, str) and "@" in value):  # a URL's USER:PASSWORD@
            msg += f"; got {value!r}"
    line = f"{key}: {msg}" if key else msg
    names = [str(p) for p in loc if not isinstance(p, int)]
    if loc and loc[0] in overrides:
        return line + " (from the command line)"
    env = {k.upper() for k in os.environ}
    for i in range(len(loc), 0, -1):
        if all(isinstance(p, str) for p in loc[:i]):
            var = "HYBRIDGATE_" + "__".join(names[:i]).upper()
            if var in env:
                return f"{line} (from ${var})"
    return line


def _warn_unknown_env() -> None:
    """A HYBRIDGATE_ variable one typo away from a setting is ignored by pydantic-settings: say so.
    (The prefix is shared with a few switches of other parts, so unknown names are not errors.)"""
    for var in os.environ:
        if not var.upper().startswith("HYBRIDGATE_"):
            continue
        name = var[len("HYBRIDGATE_"):].lower()
        top = name.split("__")[0]
        if top in Settings.model_fields or name in _NOT_SETTINGS or name.startswith("test_"):
            continue
        close = difflib.get_close_matches(top, list(Settings.model_fields), n=1, cutoff=0.8)
        if close:
            _log.warning("hybridgate: %s is not a setting and is ignored; did you mean HYBRIDGATE_%s?",
                        var, close[0].upper())


def load_settings(config_file: str | None = None, *, warn_unknown_env: bool = True, **overrides: Any) -> Settings:
    """Load settings; `config_file` wins over HYBRIDGATE_CONFIG. Raises ConfigError with field names.
    ``warn_unknown_env``: warn of a misspelt HYBRIDGATE_ variable (off where the same environment was
    read, and warned of, already: `serve`'s workers)."""
    old = os.environ.get("HYBRIDGATE_CONFIG")
    if config_file is not None:
        if not Path(config_file).exists():
            raise ConfigError(f"config file not found: {config_file}")
        os.environ["HYBRIDGATE_CONFIG"] = config_file
    if warn_unknown_env:
        _warn_unknown_env()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(e, overrides) for e in exc.errors()]
        named = os.environ.get("HYBRIDGATE_CONFIG")
        path = Path(named or DEFAULT_CONFIG_FILE)
        where = f" ({path})" if path.exists() else ""
        raise ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(lines)) from None
    except SettingsError as exc:
        # a HYBRIDGATE_<SECTION> variable whose value is not JSON; the value is not repeated (secrets)
        m = re.search(r'field "([^"]+)"', str(exc))
        field = m.group(1) if m else "?"
        var = f"HYBRIDGATE_{field.upper()}"
        info = Settings.model_fields.get(field)
        if info is not None and _inner_model(info.annotation) is not None and "list" not in str(info.annotation):
            hint = f"a JSON object, or set one key at a time: {var}__<KEY>=value"
        else:
            hint = "a JSON list"
        raise ConfigError(f"{var}: not valid JSON; {field} takes {hint}") from None
    finally:
        if config_file is not None:
            if old is None:
                os.environ.pop("HYBRIDGATE_CONFIG", None)
            else:
                os.environ["HYBRIDGATE_CONFIG"] = old
