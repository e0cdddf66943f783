"""An operator's configuration mistakes, through the `hybridgate` command as they would meet them:
each is a non-zero exit with a line or a few naming the key, file or value and what is expected, no
Python traceback and no secret. A log database or Redis that is down is not a mistake: the gateway
starts degraded, saying so."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config import ConfigError, Settings, load_settings
from tests.support.gateway import gateway_settings
from tests.support.net import free_port
from tests.support.wait import wait_for_healthz

SECRET = "hunter2-secret"
FAKE_UPSTREAM = "deployments: [{name: a, model: m, upstream_model: u, api_base: 'http://127.0.0.1:9/v1'}]\n"


def hybridgate(cwd: Path, *argv: str, config: str | None = None, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m gateway.cli [--config cwd/c.yaml] ARGV` in ``cwd``, with no HYBRIDGATE_ variable but ``env``'s."""
    cmd = [sys.executable, "-m", "gateway.cli"]
    if config is not None:
        (cwd / "c.yaml").write_text(config)
        cmd += ["--config", str(cwd / "c.yaml")]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDGATE_")}
    return subprocess.run([*cmd, *argv], cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def refused(r: subprocess.CompletedProcess[str], code: int, *expected: str) -> None:
    """Exit ``code``, every ``expected`` text on stderr, no traceback, the secret nowhere."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    for text in expected:
        assert text in r.stderr, (text, r.stderr)
    assert SECRET not in r.stderr + r.stdout


# ---------------------------------------------------------------------------------------------- the file


def test_a_config_path_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    refused(hybridgate(tmp_path, "--config", str(tmp_path), "migrate"), 2,
            f"hybridgate: {tmp_path}: cannot read the config file: Is a directory")
    (tmp_path / "weights.yaml").write_bytes(b"\xff\xfe\x00port: 1")
    refused(hybridgate(tmp_path, "--config", str(tmp_path / "weights.yaml"), "migrate"), 2,
            "weights.yaml: not a YAML config file (not UTF-8 text)")


def test_a_missing_file_named_by_hybridgate_config_is_an_error_not_the_defaults(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", env={"HYBRIDGATE_CONFIG": str(tmp_path / "nope.yaml")})
    refused(r, 2, f"config file not found: {tmp_path / 'nope.yaml'} (named by HYBRIDGATE_CONFIG)")
    assert not (tmp_path / "hybridgate.db").exists()


def test_invalid_yaml_says_where_without_quoting_the_line(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", config=f"port: 8080\nadmin_token: '{SECRET}\n")
    refused(r, 2, "c.yaml: not valid YAML: line 3, column 1:")


# ---------------------------------------------------------------------------------------------- keys and values


def test_an_unknown_key_is_named_with_the_key_it_probably_meant(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", config=(
        "databse_url: sqlite+aiosqlite:///x.db\n"
        f"admin_tokn: {SECRET}\n"
        "log: {bodys: none}\n"
        "deployments: [{name: a, model: m, upstream_model: u, api_bse: 'http://h/v1'}]\n"))
    refused(r, 2, "invalid configuration (", "c.yaml):",
            "databse_url: unknown key (did you mean 'database_url'?)",
            "admin_tokn: unknown key (did you mean 'admin_token'?)",
            "log.bodys: unknown key (did you mean 'bodies'?)",
            "deployments[0].api_bse: unknown key (did you mean 'api_base'?)")


def test_a_wrong_value_is_shown_with_where_it_came_from(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", env={"HYBRIDGATE_LOG__BODIES": "maybe"}, config=(
        "port: abc\nworkers: 0\nhttp: {body_timeout_s: -5}\nbreaker: {error_rate: 2}\n"
        "deployments:\n  - {name: a, model: m, upstream_model: u, pricing: {input_per_mtok: -1}}\n"))
    refused(r, 2, "port: Input should be a valid integer, unable to parse string as an integer; got 'abc'",
            "workers: Input should be greater than or equal to 1; got 0",
            "http.body_timeout_s: Input should be greater than 0; got -5",
            "breaker.error_rate: Input should be less than or equal to 1; got 2",
            "deployments[0].pricing.input_per_mtok: Input should be greater than or equal to 0; got -1",
            "log.bodies: Input should be 'full', 'hashed' or 'none'; got 'maybe' (from $HYBRIDGATE_LOG__BODIES)")


def test_a_secret_setting_of_the_wrong_type_is_named_without_its_value(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", config=f"admin_token: [{SECRET}]\nmetrics_token: {{a: {SECRET}}}\n")
    refused(r, 2, "admin_token: Input should be a valid string\n", "metrics_token: Input should be a valid string")


def test_a_workers_count_of_zero_on_the_command_line_is_refused(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "serve", "--workers", "0", config="local_model: {enabled: false}\n", timeout=30)
    refused(r, 2, "workers: Input should be greater than or equal to 1; got 0 (from the command line)")


def test_an_environment_override_that_is_not_json_is_named(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", env={"HYBRIDGATE_DEPLOYMENTS": '[{"name": "a"', "HYBRIDGATE_BREAKER": "x"})
    refused(r, 2, "HYBRIDGATE_")
    assert "not valid JSON" in r.stderr


def test_a_misspelt_environment_setting_is_reported(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", env={"HYBRIDGATE_DATABSE_URL": f"postgresql://u:{SECRET}@h/db"})
    assert r.returncode == 0, r.stderr  # the prefix is shared with other switches: a warning, not an error
    assert "HYBRIDGATE_DATABSE_URL is not a setting and is ignored; did you mean HYBRIDGATE_DATABASE_URL?" in r.stderr
    assert SECRET not in r.stderr


def test_duplicate_deployment_names_name_both_entries(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", config=(
        "deployments:\n  - {name: a, model: m, upstream_model: u}\n  - {name: a, model: m2, upstream_model: u}\n"))
    refused(r, 2, "\n  deployments[1].name: duplicate name 'a' (deployments[0] has it too)")


@pytest.mark.parametrize(("url", "expected"), [
    (f"mysql+aiomysql://u:{SECRET}@127.0.0.1/db", "database_url: unsupported database driver 'mysql+aiomysql'"),
    (f"not a url {SECRET}", "database_url: not a database URL: expected postgresql+asyncpg://"),
])
def test_a_database_url_the_log_cannot_use_is_refused_at_load(tmp_path: Path, url: str, expected: str) -> None:
    refused(hybridgate(tmp_path, "migrate", config=f"database_url: '{url}'\n"), 2, expected)


def test_the_blocking_database_url_spellings_that_migrate_takes_also_serve() -> None:
    """`sqlite:///` and `postgres://` reach the app as the async drivers it needs."""
    assert load_settings(database_url="sqlite:///./x.db").database_url == "sqlite+aiosqlite:///./x.db"
    assert load_settings(database_url="postgres://u:pw@h:5432/db").database_url == \
        "postgresql+asyncpg://u:pw@h:5432/db"
    kept = "postgresql+asyncpg://u:p%40w@h:5432/db?ssl=require"
    assert load_settings(database_url=kept).database_url == kept


def test_a_malformed_redis_url_is_refused_at_load(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", config=f"redis_url: 'http://u:{SECRET}@127.0.0.1:6379'\n")
    refused(r, 2, "redis_url: not a Redis URL: expected redis://")


def test_an_api_base_that_is_not_an_http_url_is_refused_at_load(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", config=(
        "deployments:\n  - {name: a, model: m, upstream_model: u, api_base: 'not a url'}\n"
        "  - {name: b, model: m, upstream_model: u, api_base: 'localhost:8000/v1'}\n"
        f"  - {{name: c, model: m, upstream_model: u, api_base: 'ftp://u:{SECRET}@host/v1'}}\n"))
    expected = "api_base: expected an http:// or https:// URL with a host, e.g. http://HOST:8000/v1"
    refused(r, 2, "invalid configuration (", f"deployments[0].{expected}; got 'not a url'\n",
            f"deployments[1].{expected}; got 'localhost:8000/v1'\n", f"deployments[2].{expected}\n")
    r = hybridgate(tmp_path, "migrate", env={"HYBRIDGATE_DEPLOYMENTS": (
        '[{"name": "a", "model": "m", "upstream_model": "u", "api_base": "http://"}]')})
    refused(r, 2, f"deployments[0].{expected}; got 'http://' (from $HYBRIDGATE_DEPLOYMENTS)")


def test_an_api_base_with_a_password_and_an_api_key_env_is_refused_at_load(tmp_path: Path) -> None:
    """Both would be the request's Authorization header: aiohttp refuses every such request (a 500 each),
    an SDK over httpx sends one and drops the other. Either alone is served."""
    r = hybridgate(tmp_path, "migrate", config=(
        "deployments:\n  - {name: a, model: m, upstream_model: u, api_base: 'http://127.0.0.1:9/v1'}\n"
        f"  - {{name: b, model: m, upstream_model: u, api_base: 'https://proxy:{SECRET}@llm.internal/v1', "
        "api_key_env: OPENAI_API_KEY}\n"))
    refused(r, 2, "invalid configuration (", "\n  deployments[1].api_base: carries credentials (USER:PASSWORD@) "
            "and the deployment has api_key_env ('OPENAI_API_KEY'); both would be the Authorization header: keep "
            "one of them\n")
    assert r.stderr.count("\n  ") == 1  # one line
    for fields in ({"api_base": "https://proxy:pw@llm.internal/v1"}, {"api_base": "https://u@llm.internal/v1"},
                   {"api_base": "https://llm.internal/v1", "api_key_env": "OPENAI_API_KEY"}):
        load_settings(deployments=[{"name": "a", "model": "m", "upstream_model": "u", **fields}])
    with pytest.raises(ConfigError, match=r"deployments\[0\].api_base: carries credentials"):
        load_settings(deployments=[{"name": "a", "model": "m", "upstream_model": "u", "provider": "litellm",
                                    "api_base": "https://u@llm.internal/v1", "api_key_env": "K"}])


def test_every_deployments_api_base_mistake_is_reported_in_one_go(tmp_path: Path) -> None:
    """A bad URL in one deployment does not hide another's credentials clash: one line each."""
    r = hybridgate(tmp_path, "migrate", config=(
        f"deployments:\n  - {{name: a, model: m, upstream_model: u, api_base: 'ftp://u:{SECRET}@host/v1'}}\n"
        f"  - {{name: b, model: m, upstream_model: u, api_base: 'https://proxy:{SECRET}@llm.internal/v1', "
        "api_key_env: OPENAI_API_KEY}\n"))
    refused(r, 2, "\n  deployments[0].api_base: expected an http:// or https:// URL with a host",
            "\n  deployments[1].api_base: carries credentials (USER:PASSWORD@) and the deployment has api_key_env "
            "('OPENAI_API_KEY')")
    assert r.stderr.count("\n  ") == 2, r.stderr


@pytest.mark.parametrize("api_base", ["http://127.0.0.1:8000/v1", "https://api.openai.com/v1", "http://[::1]:8000",
                                      "HTTPS://gateway.internal", "http://vllm/v1/"])
def test_http_and_https_api_bases_with_a_host_are_accepted(api_base: str) -> None:
    s = load_settings(deployments=[{"name": "a", "model": "m", "upstream_model": "u", "api_base": api_base}])
    assert s.deployments[0].api_base == api_base


def test_a_key_written_twice_in_the_config_file_is_refused_naming_it_and_its_line(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", config=(
        f"admin_token: {SECRET}\nlog:\n  bodies: none\n  spool_dir: ./s\n  bodies: full\nport: 1\nport: 2\n"))
    refused(r, 2, "c.yaml: not valid YAML: line 5, column 3: duplicate key 'log.bodies' (first on line 3)")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = hybridgate(tmp_path, "migrate", config=(
        "deployments:\n  - {name: a, model: m, upstream_model: u, api_base: 'http://h/v1'}\n"
        "  - name: b\n    model: m\n    upstream_model: u\n    model: m2\n"))
    refused(r, 2, "c.yaml: not valid YAML: line 6, column 5: duplicate key 'deployments[1].model' (first on line 4)")


def test_a_merge_key_that_a_mapping_then_overrides_is_not_a_duplicate(tmp_path: Path) -> None:
    """`<<: *anchor` then a key the anchor has: an override, as YAML means it, not a repeat."""
    (tmp_path / "c.yaml").write_text(
        "deployments:\n  - &up {name: a, model: m, upstream_model: u, api_base: 'http://h/v1', timeout_s: 5}\n"
        "  - {<<: *up, name: b, timeout_s: 9}\n")
    s = load_settings(str(tmp_path / "c.yaml"))
    assert [(d.name, d.timeout_s, d.api_base) for d in s.deployments] == [("a", 5, "http://h/v1"), ("b", 9, "http://h/v1")]


def test_a_local_model_device_or_dtype_torch_does_not_know_is_refused_at_load(tmp_path: Path) -> None:
    r = hybridgate(tmp_path, "migrate", config="local_model: {device: tpu, dtype: fp16}\n")
    refused(r, 2, "local_model.device: expected cpu, cuda, cuda:N, mps, xpu or xpu:N; got 'tpu'",
            "local_model.dtype: Input should be 'float32', 'bfloat16', 'float16' or 'float64'; got 'fp16'")


# ---------------------------------------------------------------------------------------------- the database


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that takes TCP connections and never answers (a Postgres behind a dead proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def _missing_pg_database() -> str:
    return f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:5432/hg_missing_{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("case", ["refused", "no such database", "sqlite under a file", "silent"])
def test_migrate_against_a_database_it_cannot_open_says_which_and_why(tmp_path: Path, case: str) -> None:
    with silent_server() as silent_port:
        url, why = {
            "refused": (f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:{free_port()}/db", "Connection refused"),
            "no such database": (_missing_pg_database(), "does not exist"),
            "sqlite under a file": (f"sqlite+aiosqlite:///{tmp_path / 'c.yaml' / 'x.db'}", "directory exists"),
            "silent": (f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:{silent_port}/db", "timeout"),
        }[case]
        started = time.monotonic()
        r = hybridgate(tmp_path, "migrate", config=f"database_url: '{url}'\n", timeout=45)
    refused(r, 1, "hybridgate: migrate: the log database at ", why)
    assert ":***@" in r.stderr or "sqlite" in url
    assert time.monotonic() - started < 30  # a silent server costs the connect timeout, not the kernel's minutes


def test_keys_and_prune_on_an_unmigrated_database_say_to_migrate(tmp_path: Path) -> None:
    cfg = f"database_url: sqlite+aiosqlite:///{tmp_path / 'fresh.db'}\n"
    refused(hybridgate(tmp_path, "keys", "list", config=cfg), 1, "keys list: the log database at",
            "no such table: api_keys; run `hybridgate migrate` first")
    refused(hybridgate(tmp_path, "prune", "--days", "3", config=cfg), 1, "prune: the log database at",
            "run `hybridgate migrate` first")


def test_keys_and_prune_give_up_on_a_database_that_never_answers(tmp_path: Path) -> None:
    """The connect bound migrate has (requestlog.urls.connect_timeout_args), not asyncpg's 60 s."""
    commands = [("keys", "list"), ("keys", "revoke", "k1"), ("prune", "--days", "3")]
    with silent_server() as port, ThreadPoolExecutor(len(commands)) as pool:
        cfg = f"database_url: 'postgresql+asyncpg://u:{SECRET}@127.0.0.1:{port}/db'\n"
        (tmp_path / "c.yaml").write_text(cfg)
        started = time.monotonic()
        runs = list(pool.map(lambda argv: hybridgate(tmp_path, "--config", str(tmp_path / "c.yaml"), *argv,
                                                     timeout=50), commands))
        took = time.monotonic() - started
    for argv, r in zip(commands, runs, strict=True):
        refused(r, 1, f"hybridgate: {' '.join(argv[:2]) if argv[0] == 'keys' else 'prune'}: the log database at "
                f"postgresql+asyncpg://u:***@127.0.0.1:{port}/db: connection timeout expired\n")
        assert len(r.stderr.splitlines()) == 1, r.stderr
    assert took < 30, took


# ---------------------------------------------------------------------------------------------- serve


def test_serve_on_a_database_that_was_never_migrated_says_to_migrate(tmp_path: Path, fresh_pg_url: str) -> None:
    base = "local_model: {enabled: false}\n" + FAKE_UPSTREAM
    r = hybridgate(tmp_path, "serve", config=base + f"database_url: sqlite+aiosqlite:///{tmp_path / 'new.db'}\n")
    refused(r, 2, "database_url: the SQLite log", "does not exist yet: run `hybridgate migrate`")
    assert not (tmp_path / "new.db").exists()
    r = hybridgate(tmp_path, "serve", config=base + f"database_url: {fresh_pg_url}\n")
    refused(r, 2, "has no hybridgate tables; this gateway needs", "run `hybridgate migrate`")


@pytest.mark.parametrize("case", ["missing folder", "invalid policy", "repeated key", "unknown default_model"])
def test_serve_refuses_policies_and_a_default_model_it_cannot_use(tmp_path: Path, sqlite_url: str, case: str) -> None:
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "cheap.yaml").write_text("name: cheap\nselector: nonsense\n")
    twice = tmp_path / "twice"
    twice.mkdir()
    (twice / "pin.yaml").write_text("name: pin\nselector: {type: fixed}\nselector: {type: cheapest}\n")
    extra, expected = {
        "missing folder": (f"policies_dir: {tmp_path / 'nope'}\n", f"policies_dir: {tmp_path / 'nope'} does not exist"),
        "invalid policy": (f"policies_dir: {bad}\n", f"policies_dir: {bad / 'cheap.yaml'}: invalid policy:\n  line 2: selector"),
        "repeated key": (f"policies_dir: {twice}\n", f"policies_dir: {twice / 'pin.yaml'}: invalid policy:\n"
                                                       "  line 3: selector: duplicate key 'selector' (first on line 2)"),
        "unknown default_model": ("default_model: nosuch\n",
                                  "default_model: 'nosuch' is neither a configured model (m) nor a policy (auto)"),
    }[case]
    cfg = f"database_url: {sqlite_url}\nlocal_model: {{enabled: false}}\n" + FAKE_UPSTREAM + extra
    refused(hybridgate(tmp_path, "serve", "--port", str(free_port()), config=cfg), 2, expected)


@pytest.mark.parametrize("case", ["no checkpoint", "no api_base"])
def test_serve_names_the_deployment_its_backend_refuses(tmp_path: Path, sqlite_url: str, case: str) -> None:
    extra, expected = {
        "no checkpoint": (f"local_model: {{checkpoint: {tmp_path}}}\n",
                          f"hybridgate: local_model.checkpoint: {tmp_path} is not a checkpoint directory (no config.json)"),
        "no api_base": ("local_model: {enabled: false}\ndeployments: [{name: a, model: m, upstream_model: u}]\n",
                        "hybridgate: deployments[0] ('a'): provider openai_compatible needs api_base"),
    }[case]
    r = hybridgate(tmp_path, "serve", "--port", str(free_port()), config=f"database_url: {sqlite_url}\n" + extra)
    refused(r, 3, expected)


@pytest.mark.parametrize("case", ["local_model", "a local deployment"])
def test_serve_refuses_a_local_model_device_this_machine_cannot_use(tmp_path: Path, sqlite_url: str,
                                                                    case: str) -> None:
    """Before any weights load (or the child server starts): one line, not the child's traceback."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine where torch sees no CUDA device")
    extra, expected = {
        "local_model": ("local_model: {device: cuda}\n", "hybridgate: local_model.device: 'cuda' cannot be used: "),
        "a local deployment": (
            "local_model: {enabled: false}\n"
            "deployments: [{name: gpu, model: m, provider: local, upstream_model: shipped, local_device: 'cuda:1'}]\n",
            "hybridgate: deployments[0].local_device ('gpu'): 'cuda:1' cannot be used: "),
    }[case]
    r = hybridgate(tmp_path, "serve", "--port", str(free_port()), config=f"database_url: {sqlite_url}\n" + extra)
    refused(r, 3, expected)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def _spool_dir_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A `log.spool_dir` the request log cannot use, and what the refusal says about it."""
    (tmp_path / "afile").write_text("x")
    if case == "a file":
        return tmp_path / "afile", f"log.spool_dir: {tmp_path / 'afile'} (resolved from {tmp_path}) is a file; "
    if case == "below a file":
        return (tmp_path / "afile" / "spool", f"log.spool_dir: {tmp_path / 'afile' / 'spool'} (resolved from "
                f"{tmp_path}) cannot be made: {tmp_path / 'afile'} is a file; ")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):
        pytest.skip("this user may write in a read-only folder (root)")
    return locked, f"log.spool_dir: {locked} (resolved from {tmp_path}) is not writable by this process"


@pytest.mark.parametrize("case", ["a file", "below a file", "not writable"])
def test_serve_refuses_a_spool_dir_the_request_log_cannot_use(tmp_path: Path, sqlite_url: str, case: str) -> None:
    """One line naming the setting, exit 2, before the port opens: not the request log's traceback at start."""
    spool, expected = _spool_dir_case(tmp_path, case)
    cfg = f"database_url: {sqlite_url}\nlocal_model: {{enabled: false}}\nlog: {{spool_dir: '{spool}'}}\n" + FAKE_UPSTREAM
    r = hybridgate(tmp_path, "serve", "--port", str(free_port()), config=cfg)
    refused(r, 2, "hybridgate: " + expected, "give a folder")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_serve_with_the_log_database_down_starts_degraded_and_says_why(tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:{free_port()}/db"
    (tmp_path / "c.yaml").write_text(f"database_url: '{url}'\nlocal_model: {{enabled: false}}\n" + FAKE_UPSTREAM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDGATE_")}
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(tmp_path / "c.yaml"), "serve",
                                 "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_healthz(proc, port, 60, (tmp_path / "serve.log").read_text)
    finally:
        proc.terminate()
        proc.wait(30)
    out = (tmp_path / "serve.log").read_text()
    assert "hybridgate: warning: the log database at postgresql+asyncpg://postgres:***@127.0.0.1:" in out, out
    assert "Connection refused" in out and "starting anyway: request rows spool to" in out
    assert SECRET not in out


def test_a_deployment_whose_key_variable_is_unset_or_empty_is_one_warning_line_at_start(
        tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not an error (the other deployments are served), but the operator hears it before the first request
    fails: one line per such deployment, from `serve`'s checks and from an embedded app's."""
    from gateway.app import gateway_engine
    from gateway.preflight import check_app, check_serve

    monkeypatch.delenv("HG_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("HG_TEST_EMPTY_KEY", "")
    monkeypatch.setenv("HG_TEST_SET_KEY", SECRET)
    up = {"model": "m", "upstream_model": "u", "api_base": "http://127.0.0.1:9/v1"}
    settings = gateway_settings("http://127.0.0.1:9/v1", sqlite_url, tmp_path, deployments=[
        {"name": "a", "api_key_env": "HG_TEST_UNSET_KEY", **up}, {"name": "b", "api_key_env": "HG_TEST_SET_KEY", **up},
        {"name": "c", **up}, {"name": "d", "api_key_env": "HG_TEST_EMPTY_KEY", **up}])
    expected = [
        "deployments[0].api_key_env: the environment variable 'HG_TEST_UNSET_KEY' is not set; deployment 'a' fails "
        "every request (upstream auth error) until it is set",
        "deployments[3].api_key_env: the environment variable 'HG_TEST_EMPTY_KEY' is empty; deployment 'd' fails "
        "every request (upstream auth error) until it is set",
    ]
    assert [w for w in check_serve(settings).warnings if "api_key_env" in w] == expected

    async def embedded() -> list[str]:
        engine = gateway_engine(settings)
        try:
            return (await check_app(settings, engine)).warnings
        finally:
            await engine.dispose()

    warnings = asyncio.run(embedded())
    assert [w for w in warnings if "api_key_env" in w] == expected
    assert SECRET not in "".join(warnings)


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_says_each_startup_warning_once(tmp_path: Path, sqlite_url: str, workers: int) -> None:
    """`serve` checks before it starts the server and its app's startup checks again only where serve did not
    (an embedded app): a start prints each warning of the checks, and of the settings, once, however many
    workers it runs (no keys, several workers without Redis: said by serve, not by each worker; a worker
    that sees its siblings' heartbeats adds nothing)."""
    port = free_port()
    (tmp_path / "c.yaml").write_text(
        f"database_url: {sqlite_url}\nlocal_model: {{enabled: false}}\n"
        "deployments: [{name: a, model: m, upstream_model: u, api_base: 'http://127.0.0.1:9/v1', "
        "api_key_env: HG_TEST_UNSET_KEY}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDGATE_") and k != "HG_TEST_UNSET_KEY"}
    env["HYBRIDGATE_REQUIRE_KEY"] = "true"  # a misspelt setting: warned of, and ignored
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(tmp_path / "c.yaml"), "serve",
                                 "--port", str(port), "--workers", str(workers)],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        wait_for_healthz(proc, port, 90, log_path.read_text)
        # every worker started, and each has beaten once (the later ones seeing the earlier ones' rows)
        while log_path.read_text().count("Application startup complete") < workers or _instances(sqlite_url) < workers:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
    out = log_path.read_text()
    warnings = ["the environment variable 'HG_TEST_UNSET_KEY' is not set",
                "HYBRIDGATE_REQUIRE_KEY is not a setting and is ignored", "WITHOUT gateway API keys"]
    for warning in warnings:
        assert out.count(warning) == 1, (warning, out)
    assert out.count("no redis_url is configured") == (1 if workers > 1 else 0), out
    assert out.count("2 worker processes are configured") == (1 if workers > 1 else 0), out


def _instances(sqlite_url: str) -> int:
    """Heartbeat rows in the SQLite log behind ``sqlite_url``."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(sqlite_url.partition(":///")[2])) as db:
        return int(db.execute("SELECT count(*) FROM gateway_instances").fetchone()[0])


# ---------------------------------------------------------------------------------------------- create_app


def _start_and_stop(settings: Settings) -> None:
    """An embedding server's part: build the app, run its startup, then its shutdown."""
    app = create_app(settings)

    async def lifespan() -> None:
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(lifespan())


@pytest.mark.parametrize("case", ["missing policies_dir", "invalid policy", "unknown default_model",
                                  "unmigrated database", "missing SQLite file", "spool_dir a file"])
def test_an_app_built_with_create_app_refuses_at_startup_what_serve_refuses(
        tmp_path: Path, sqlite_url: str, case: str) -> None:
    """create_app's startup runs serve's preflight: an embedded gateway does not start quietly broken
    (nothing seeded, every log row refused, `default` a 404)."""
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "cheap.yaml").write_text("name: cheap\nselector: nonsense\n")
    (tmp_path / "empty.db").touch()
    overrides, expected = {
        "missing policies_dir": ({"policies_dir": str(tmp_path / "nope")}, f"policies_dir: {tmp_path / 'nope'} does not exist"),
        "invalid policy": ({"policies_dir": str(bad)}, f"policies_dir: {bad / 'cheap.yaml'}: invalid policy:\n  line 2: selector"),
        "unknown default_model": ({"default_model": "nosuch"}, "default_model: 'nosuch' is neither a configured model"),
        "unmigrated database": ({"database_url": f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"},
                                "has no hybridgate tables; this gateway needs"),
        "missing SQLite file": ({"database_url": f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"},
                                "database_url: the SQLite log"),
        "spool_dir a file": ({"log": {"spool_dir": str(tmp_path / "empty.db")}},
                             f"log.spool_dir: {tmp_path / 'empty.db'} (resolved from {Path.cwd()}) is a file"),
    }[case]
    settings = gateway_settings("http://127.0.0.1:9/v1", sqlite_url, tmp_path, **overrides)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        _start_and_stop(settings)
    assert not (tmp_path / "new.db").exists()


def test_an_app_built_with_create_app_starts_degraded_when_the_log_database_is_down(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:{free_port()}/db"
    with caplog.at_level(logging.WARNING, logger="hybridgate"):
        _start_and_stop(gateway_settings("http://127.0.0.1:9/v1", url, tmp_path, default_model="maybe-stored"))
    text = caplog.text
    assert "the log database at postgresql+asyncpg://postgres:***@127.0.0.1:" in text and "starting anyway" in text
    assert "default_model: 'maybe-stored' is neither" in text and "(the log database is unreachable)" in text
    assert SECRET not in text


def test_only_serves_own_preflight_hand_off_skips_an_apps_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import preflight

    monkeypatch.setenv(preflight.SERVE_CHECKED_ENV, "database_reachable")  # set by hand: no process named
    assert preflight.checked_by_serve() is None
    monkeypatch.setenv(preflight.SERVE_CHECKED_ENV, "999999999:database_reachable")  # no such process
    assert preflight.checked_by_serve() is None
    preflight.hand_to_workers(preflight.AppChecks([], False))
    got = preflight.checked_by_serve()
    assert got is not None and got.database_reachable is False and got.warnings == []
