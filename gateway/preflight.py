"""What `hybridgate serve` checks before it starts the server (`check_serve`), what every app built
with `gateway.app.create_app` checks as it starts (`check_app`: the same checks, for an embedded app
that never went through `serve`; serve's own apps take its outcome instead, so each check runs and
warns once per start), and how the command line words a database failure.

Configuration mistakes that the settings' own validation cannot see (they need the file system or
the database) would otherwise surface as a traceback in every worker, or as a gateway that starts
and quietly cannot do what it was configured to do: an unmigrated log database (every row refused,
a wall of SQL warnings), a `policies_dir` that does not exist or holds an invalid policy (nothing
seeded, not even the shipped `auto`), a `default_model` that names nothing, a `log.spool_dir` that is a
file or not writable (the request log cannot start). Each is one `ConfigError` line naming the key and
what to do. A log database that cannot be reached is not a
mistake here: the gateway degrades (rows spool to disk) as DESIGN.md says, with one warning line; so
is a deployment whose ``api_key_env`` names an unset or empty variable (the others are served). The
start's own warnings (`start_warnings`: requests accepted without gateway keys, several workers without
Redis) are said once per start too.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from common.errors import error_text
from gateway.config import ConfigError, Settings
from policies.loader import PolicyValidationError, parse_policy
from requestlog.urls import connect_timeout_args, to_sync_url


@dataclass(frozen=True, slots=True)
class AppChecks:
    """What `check_app` found: warnings to log, and whether the log database answered (when it did not,
    startup loads nothing more from it: the background jobs do once it answers). ``start_warned``: the
    start's own warnings (`start_warnings`) were said already (by `serve`, for its workers), so the
    app's startup does not say them again."""

    warnings: list[str]
    database_reachable: bool
    start_warned: bool = False


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def db_failure(url: str, exc: BaseException) -> str:
    """One line for a database error: the URL (no password), the driver's own reason (not
    SQLAlchemy's statement and parameters), and what to do where that is clear."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(orig, TimeoutError) and not str(orig):  # asyncpg's connect timeout says nothing itself
        reason = "connection timeout expired"
    elif isinstance(orig, OSError) and orig.strerror:
        reason = orig.strerror + (f": {orig.filename}" if orig.filename else "")
    else:
        reason = error_text(orig)
    reason = re.sub(r"\s+", " ", reason).strip()
    low = reason.lower()
    hint = ""
    if "no such table" in low or ("relation" in low and "does not exist" in low):
        hint = "; run `hybridgate migrate` first"
    elif "unable to open database file" in low or (isinstance(orig, OSError) and "sqlite" in url):
        hint = "; check that the SQLite file's directory exists and is writable"
    return f"the log database at {redact(url)}: {reason}{hint}"


# `serve` runs the checks once, before the server starts, and hands the outcome to the apps of its workers
# (`gateway.app.app_from_env`) in this variable, so that they neither check nor warn again.
SERVE_CHECKED_ENV = "HYBRIDGATE_PREFLIGHT"
_REACHABLE = {"database_reachable": True, "database_unreachable": False}


def check_serve(settings: Settings) -> AppChecks:
    """Raise ConfigError for a configuration `serve` cannot work with; return warnings to print."""
    warnings: list[str] = []
    _spool_dir(settings)
    _provider_keys(settings, warnings)
    seeded = _policy_files(settings, warnings)
    reachable, live = _log_database(settings, warnings)
    _default_model(settings, seeded | live, reachable, warnings)
    return AppChecks(warnings, reachable)


def hand_to_workers(checks: AppChecks) -> None:
    """Tell the apps `serve` is about to start (in this process, or in workers that inherit its
    environment) that the checks ran and their warnings were printed (`checked_by_serve`). The value names
    serve's process, so a variable set by hand or inherited by an unrelated child never skips the checks."""
    outcome = "database_reachable" if checks.database_reachable else "database_unreachable"
    os.environ[SERVE_CHECKED_ENV] = f"{os.getpid()}:{outcome}"


def checked_by_serve() -> AppChecks | None:
    """The outcome of `serve`'s checks in an app it starts (no warnings: serve printed them), else None.
    In a worker process of serve's (several workers), serve also said the start's own warnings; in
    serve's own process (one worker) the app says them as it finishes starting."""
    pid, _, outcome = os.environ.get(SERVE_CHECKED_ENV, "").partition(":")
    reachable = _REACHABLE.get(outcome)
    if reachable is None or pid not in (str(os.getpid()), str(os.getppid())):
        return None
    return AppChecks([], reachable, start_warned=pid == str(os.getppid()))


async def check_app(settings: Settings, engine: AsyncEngine) -> AppChecks:
    """`check_serve`'s checks from inside an app's startup (`gateway.app.create_app`'s lifespan), on the
    app's own database engine: the spool folder, the policy files it is about to seed, the log database's
    schema and live policies (the database startup reads anyway), `default_model`. Raise ConfigError."""
    warnings: list[str] = []
    await asyncio.to_thread(_spool_dir, settings)
    _provider_keys(settings, warnings)
    seeded = await asyncio.to_thread(_policy_files, settings, warnings)
    reachable, live = await _log_database_async(settings, engine, warnings)
    _default_model(settings, seeded | live, reachable, warnings)
    return AppChecks(warnings, reachable)


def start_warnings(settings: Settings) -> list[str]:
    """What the settings leave open or unshared, said once per start when the gateway has started (a start
    refused for a configuration mistake says only the mistake): requests accepted without keys, several
    workers without Redis to share limits. An app says them at the end of its startup; `serve` with
    several workers says them itself, before the workers start, and its workers do not
    (`checked_by_serve`)."""
    warnings: list[str] = []
    if not settings.keys_required:
        warnings.append(f"accepting requests WITHOUT gateway API keys (bound to loopback {settings.host}). "
                        "Bind to another address or set require_keys: true to enforce keys.")
    unshared = unshared_workers_warning(settings)
    if unshared is not None:
        warnings.append(unshared)
    return warnings


def unshared_workers_warning(settings: Settings) -> str | None:
    """The warning for several workers configured without Redis (None when there is nothing to say): one
    of the start's warnings, so said once per start, not by each worker (whose heartbeat then keeps quiet
    about the siblings it sees: `state.instances.Heartbeat`'s ``warned``)."""
    if settings.workers > 1 and not settings.redis_url:
        return (f"{settings.workers} worker processes are configured, but no redis_url is configured: rate "
                "limits, concurrency caps and budget holds are kept per process, so every process enforces "
                "them separately (N processes allow up to N times each limit). Set redis_url to share them.")
    return None


def _spool_dir(settings: Settings) -> None:
    """ConfigError when `log.spool_dir` cannot be the spool: a file in its place (or in place of a folder
    above it), or a folder this process may not write in (the request log would fail at start with a
    traceback, or later lose every row the database does not take). A folder not there yet is made at
    start, so the nearest existing folder above it must be writable."""
    folder = Path(settings.log.spool_dir).expanduser()
    where = f"log.spool_dir: {folder} (resolved from {Path.cwd()})"
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == folder else f"cannot be made: {existing} is a file"
        raise ConfigError(f"{where} {what}; give a folder this gateway may write in")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == folder else f"cannot be made: {existing} "
        raise ConfigError(f"{where} {what}is not writable by this process; give a folder it may write in")


def _provider_keys(settings: Settings, warnings: list[str]) -> None:
    """One warning per deployment whose ``api_key_env`` names a variable that is unset or empty here: it
    fails every request (an upstream auth error) until the variable is set and the gateway restarted. Not
    an error: the other deployments are served."""
    for i, d in enumerate(settings.deployments):
        if d.api_key_env and not os.environ.get(d.api_key_env):
            state = "empty" if d.api_key_env in os.environ else "not set"
            warnings.append(f"deployments[{i}].api_key_env: the environment variable {d.api_key_env!r} is {state}; "
                            f"deployment {d.name!r} fails every request (upstream auth error) until it is set")


def _default_model(settings: Settings, policies: set[str], reachable: bool, warnings: list[str]) -> None:
    """ConfigError when `default_model` names neither a configured model nor a policy (``policies``: the
    seeded and stored ones, as far as the log database tells; the shipped default); a warning only
    while the database, which may hold it, does not answer."""
    name = settings.default_model
    if not name:
        return
    models = {d.model for d in settings.all_deployments()}
    if settings.all_deployments():
        from gateway.app import DEFAULT_POLICIES  # seeded at start when there is any deployment

        policies = policies | _policy_names(DEFAULT_POLICIES)
    if name not in models | policies:
        what = (f"default_model: {name!r} is neither a configured model ({', '.join(sorted(models)) or 'none'}) "
                f"nor a policy ({', '.join(sorted(policies)) or 'none'})")
        if reachable:
            raise ConfigError(what + "; requests for the model `default` would get 404")
        warnings.append(what + " that this process can see (the log database is unreachable)")


def _policy_names(folder: Path) -> set[str]:
    return {parse_policy(p.read_text(encoding="utf-8"), default_name=p.stem, source=str(p)).name
            for p in sorted(folder.glob("*.y*ml"))}


def _policy_files(settings: Settings, warnings: list[str]) -> set[str]:
    """Names of the policies `policies_dir` seeds; ConfigError for a missing folder or a bad file
    (as the admin API refuses one: nothing of it would be stored)."""
    if not settings.policies_dir:
        return set()
    folder = Path(settings.policies_dir)
    if not folder.is_dir():
        state = "is not a directory" if folder.exists() else "does not exist"
        raise ConfigError(f"policies_dir: {folder} {state} (resolved from {Path.cwd()}); "
                          "give the folder that holds the policy YAML files, or remove the key")
    files = sorted(folder.glob("*.y*ml"))
    if not files:
        warnings.append(f"policies_dir: {folder} holds no *.yaml or *.yml files; no policy is seeded from it")
    names = set()
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"policies_dir: cannot read {p}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            names.add(parse_policy(text, default_name=p.stem, source=str(p)).name)
        except PolicyValidationError as exc:
            raise ConfigError(f"policies_dir: {exc}") from None
    return names


_MIGRATE = "run `hybridgate migrate` (or start with `hybridgate serve --migrate`)"


def _log_database(settings: Settings, warnings: list[str]) -> tuple[bool, set[str]]:
    """(reachable, names of the live stored policies). ConfigError when the database answers but its
    schema is not the one this code needs; a warning when it does not answer."""
    url = to_sync_url(settings.database_url)
    _sqlite_file_exists(url)
    revisions = _revisions()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool,
                              connect_args=connect_timeout_args(url, settings.database_connect_timeout_s))
    try:
        with engine.connect() as conn:
            return True, _schema(conn, settings, revisions, warnings)
    except SQLAlchemyError as exc:
        warnings.append(_unreachable(settings, exc))
        return False, set()
    finally:
        engine.dispose()


async def _log_database_async(settings: Settings, engine: AsyncEngine, warnings: list[str]) -> tuple[bool, set[str]]:
    """`_log_database` on an app's async engine (bounded by its own timeouts, `gateway.app.gateway_engine`;
    the whole look by both together)."""
    _sqlite_file_exists(to_sync_url(settings.database_url))
    revisions = await asyncio.to_thread(_revisions)  # reads every migration script
    bound_s = settings.database_connect_timeout_s + settings.database_timeout_s
    try:
        async with asyncio.timeout(bound_s), engine.connect() as conn:
            return True, await conn.run_sync(_schema, settings, revisions, warnings)
    except (SQLAlchemyError, OSError) as exc:  # TimeoutError is an OSError
        warnings.append(_unreachable(settings, exc))
        return False, set()


def _sqlite_file_exists(url: sa.URL) -> None:
    """A SQLite log that is not there is a mistake, not an outage (and opening it would create it empty)."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not Path(url.database).expanduser().exists():
        raise ConfigError(f"database_url: the SQLite log {url.database} does not exist yet: {_MIGRATE}")


def _revisions() -> tuple[str | None, set[str]]:
    """(head, every revision) of the migrations this code ships."""
    from alembic.script import ScriptDirectory

    from requestlog.migrate import make_config

    scripts = ScriptDirectory.from_config(make_config())
    return scripts.get_current_head(), {s.revision for s in scripts.walk_revisions()}


def _schema(conn: sa.Connection, settings: Settings, revisions: tuple[str | None, set[str]],
            warnings: list[str]) -> set[str]:
    """Names of the live stored policies; ConfigError when the schema is not the one this code needs."""
    from alembic.runtime.migration import MigrationContext

    from requestlog.tables import policy_active

    head, known = revisions
    current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        if current is None or current in known:
            state = "has no hybridgate tables" if current is None else f"is at schema revision {current}"
            raise ConfigError(f"database_url: the log database at {redact(settings.database_url)} {state}; "
                              f"this gateway needs {head}: {_MIGRATE}")
        warnings.append(f"the log database is at schema revision {current}, which this gateway does not "
                        "know (a newer release migrated it?)")
    return set(conn.execute(sa.select(policy_active.c.name)).scalars())


def _unreachable(settings: Settings, exc: BaseException) -> str:
    return (f"{db_failure(settings.database_url, exc)}; starting anyway: request rows spool to "
            f"{settings.log.spool_dir} and policies load once it answers")
