"""Versioned policies in memory, with a pluggable persistent store and hot reload.

Every write creates a new immutable version (validated first: an invalid policy is never stored)
and, by default, activates it. Rollback re-activates an older version; nothing is ever edited in
place, so the request log's ``(policy, policy_version)`` always names the exact spec that routed
a request.

Retiring a policy takes its active pointer away (it stops routing everywhere, like an unknown model)
and records who retired it and when; its versions stay stored as history. A later write of the same
name continues the numbering and routes again, and activating a stored version restores it. Seeding
from a folder at start does not bring a retired policy back unless its file holds text no stored
version has (`seed_dir`).

The request path only calls `PolicyRegistry.active` (a dict lookup, no I/O). Hot reload has two
paths. Push: after every change the registry tells its `PolicyNotifier` (with Redis configured,
`state.policy_events.RedisPolicyEvents` publishes it and every process reloads on the message,
within milliseconds). Poll: every process runs `run_reload_loop` (store polling, 1 s by default),
so a change is live everywhere within the poll interval even without Redis, or when a
notification is lost; while the push path is live, polling relaxes to a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from common.errors import error_text
from policies.loader import PolicyValidationError, parse_policy
from policies.schema import Policy

log = logging.getLogger("hybridgate.policies")


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """One row of the ``policies`` table."""

    name: str
    version: int
    spec_yaml: str
    created_at: datetime
    created_by: str | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """A stored version together with its parsed policy."""

    row: StoredPolicy
    policy: Policy

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def version(self) -> int:
        return self.row.version


@dataclass(frozen=True, slots=True)
class Retirement:
    """One retirement of a policy: the version that was live, when, and by whom (kept as history)."""

    name: str
    version: int | None
    retired_at: datetime
    retired_by: str | None = None


@dataclass(frozen=True, slots=True)
class PolicySummary:
    name: str
    active_version: int | None
    latest_version: int
    versions: int
    description: str
    retired: Retirement | None = None


class VersionConflict(Exception):
    """The store already has this (name, version): another process wrote concurrently."""


class PolicyNotFound(KeyError):
    pass


class PolicyExists(ValueError):
    pass


class PolicyRetired(LookupError):
    """The policy is stored but not live (retired: ``retirement`` says when and by whom), so there
    is nothing to retire again or to roll back from."""

    def __init__(self, name: str, retirement: Retirement | None) -> None:
        super().__init__(f"{name} is not live")
        self.name = name
        self.retirement = retirement


class PolicyStore(Protocol):
    """Persistence for the registry (the DB-backed one is `policies.db_store.DbPolicyStore`)."""

    async def load(self) -> tuple[list[StoredPolicy], dict[str, int], list[Retirement]]:
        """Every stored version, name → active version, and every retirement (oldest first)."""
        ...

    async def insert(self, row: StoredPolicy) -> None:
        """Store a new version; raise `VersionConflict` if (name, version) exists."""
        ...

    async def set_active(self, name: str, version: int) -> None: ...

    async def retire(self, name: str, retired_at: datetime, retired_by: str | None) -> Retirement | None:
        """Remove ``name``'s active pointer and record the retirement, atomically; the recorded
        `Retirement` names the version that was live. None (nothing recorded) when the name has no
        active pointer: another process retired it first."""
        ...


class PolicyNotifier(Protocol):
    """Tells other processes that a policy changed, so they reload now instead of at their next
    poll. Implementations must not raise: the change is already stored when they are called, and
    polling carries it anyway (`state.policy_events.RedisPolicyEvents` is the Redis one)."""

    async def changed(self, name: str, active_version: int | None) -> None: ...


class InMemoryPolicyStore:
    """A store that forgets on restart: tests and single-process setups without a database."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], StoredPolicy] = {}
        self.active: dict[str, int] = {}
        self.retirements: list[Retirement] = []

    async def load(self) -> tuple[list[StoredPolicy], dict[str, int], list[Retirement]]:
        return list(self.rows.values()), dict(self.active), list(self.retirements)

    async def insert(self, row: StoredPolicy) -> None:
        if (row.name, row.version) in self.rows:
            raise VersionConflict(f"{row.name} v{row.version} exists")
        self.rows[(row.name, row.version)] = row

    async def set_active(self, name: str, version: int) -> None:
        self.active[name] = version

    async def retire(self, name: str, retired_at: datetime, retired_by: str | None) -> Retirement | None:
        version = self.active.pop(name, None)
        if version is None:
            return None
        r = Retirement(name, version, retired_at, retired_by)
        self.retirements.append(r)
        return r


class PolicyRegistry:
    def __init__(
        self,
        store: PolicyStore | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        notifier: PolicyNotifier | None = None,
    ) -> None:
        self.store: PolicyStore = store if store is not None else InMemoryPolicyStore()
        self._clock = clock
        self.notifier = notifier
        self._versions: dict[str, dict[int, PolicyVersion]] = {}
        self._active: dict[str, int] = {}
        self._active_policy: dict[str, Policy] = {}  # the request path reads only this
        self._retirements: dict[str, list[Retirement]] = {}  # oldest first, per name
        self._lock = asyncio.Lock()
        # Stored rows this schema refuses, and active versions that name no usable row: each is logged
        # once, not again on every poll (a row never changes, and polling runs every second).
        self._unusable: set[tuple[str, int]] = set()
        self._reported_active: set[tuple[str, int]] = set()

    # ---- reads (no I/O) ---------------------------------------------------------------------------

    def active(self, name: str) -> Policy | None:
        """The live policy for a virtual model name, or None: the request path's one call."""
        return self._active_policy.get(name)

    def active_version(self, name: str) -> int | None:
        return self._active.get(name)

    def names(self) -> list[str]:
        """Every stored policy, retired ones included."""
        return sorted(self._versions)

    def retired(self, name: str) -> Retirement | None:
        """The retirement that took ``name`` out of routing, or None while it is live (or unknown)."""
        if name in self._active or name not in self._versions:
            return None
        history = self._retirements.get(name)
        return history[-1] if history else None

    def retirements(self, name: str) -> list[Retirement]:
        """Every retirement of ``name``, oldest first (a policy retired, written again and retired
        again has two)."""
        return list(self._retirements.get(name, ()))

    def get(self, name: str, version: int | None = None) -> PolicyVersion:
        """A version (the active one by default)."""
        versions = self._versions.get(name)
        if not versions:
            raise PolicyNotFound(name)
        v = version if version is not None else self._active.get(name, max(versions))
        if v not in versions:
            raise PolicyNotFound(f"{name} v{v}")
        return versions[v]

    def versions(self, name: str) -> list[PolicyVersion]:
        if name not in self._versions:
            raise PolicyNotFound(name)
        return [self._versions[name][v] for v in sorted(self._versions[name])]

    def list(self) -> list[PolicySummary]:
        out = []
        for name in self.names():
            vs = self._versions[name]
            act = self._active.get(name)
            shown = vs[act] if act in vs else vs[max(vs)]
            out.append(PolicySummary(name, act, max(vs), len(vs), shown.policy.description, self.retired(name)))
        return out

    @staticmethod
    def validate(name: str, spec_yaml: str) -> Policy:
        """Parse and validate without storing (the admin API's dry run)."""
        return parse_policy(spec_yaml, require_name=name, source=name)

    # ---- writes ----------------------------------------------------------------------------------------

    async def create(
        self, name: str, spec_yaml: str, *, created_by: str | None = None, comment: str | None = None
    ) -> PolicyVersion:
        """Version 1 of a new policy, active. `PolicyExists` if the name is taken."""
        await self.reload()
        if name in self._versions:
            raise PolicyExists(name)
        return await self._write(name, spec_yaml, created_by, comment, activate=True)

    async def update(
        self,
        name: str,
        spec_yaml: str,
        *,
        created_by: str | None = None,
        comment: str | None = None,
        activate: bool = True,
    ) -> PolicyVersion:
        """A new version of an existing policy (activated unless ``activate=False``)."""
        await self.reload()
        if name not in self._versions:
            raise PolicyNotFound(name)
        return await self._write(name, spec_yaml, created_by, comment, activate=activate)

    async def put(
        self, name: str, spec_yaml: str, *, created_by: str | None = None, comment: str | None = None
    ) -> PolicyVersion:
        """Create or update; a spec identical to the active one writes nothing (idempotent seeding).
        A retired policy gets a new version whatever its text, and routes again."""
        await self.reload()
        if name in self._active:
            cur = self.get(name)
            if cur.row.spec_yaml == spec_yaml:
                return cur
        return await self._write(name, spec_yaml, created_by, comment, activate=True)

    async def activate(self, name: str, version: int) -> PolicyVersion:
        """Make a stored version live (a retired policy routes again). Under the lock, so a reload
        that read the store before this write cannot undo it here until the next poll."""
        async with self._lock:
            pv = self.get(name, version)
            await self.store.set_active(name, version)
            self._set_active(name, version)
        await self._notify(name)
        return pv

    async def retire(self, name: str, *, retired_by: str | None = None) -> Retirement:
        """Take a live policy out of routing in every process; its versions stay stored.

        `PolicyNotFound` for a name never stored, `PolicyRetired` when it is not live (retired here
        or by another process)."""
        async with self._lock:
            await self._reload_locked()
            if name not in self._versions:
                raise PolicyNotFound(name)
            if name not in self._active:
                raise PolicyRetired(name, self.retired(name))
            r = await self.store.retire(name, self._clock(), retired_by)
            if r is None:  # another process retired it between our reload and the write
                await self._reload_locked()
                raise PolicyRetired(name, self.retired(name))
            self._retirements.setdefault(name, []).append(r)
            self._drop_active(name)
        await self._notify(name)
        return r

    async def rollback(self, name: str, version: int | None = None) -> PolicyVersion:
        """Re-activate ``version``, or the newest version older than the active one (`PolicyRetired`
        for a retired policy: there is no active one to go back from)."""
        await self.reload()
        if name not in self._versions:
            raise PolicyNotFound(name)
        if version is None and name not in self._active:
            raise PolicyRetired(name, self.retired(name))
        if version is None:
            cur = self._active[name]
            older = [v for v in self._versions[name] if v < cur]
            if not older:
                raise PolicyNotFound(f"{name}: no version before v{cur}")
            version = max(older)
        return await self.activate(name, version)

    async def seed_dir(self, path: str | Path, *, created_by: str = "seed") -> list[PolicyVersion]:
        """Store every policy file of a folder (e.g. the shipped examples) as a new, active version, unless
        the file's text is already stored as one of that policy's versions.

        So a restart changes nothing an admin did since the file was last seeded: a version written or
        rolled back to through the admin API stays live, and a retired policy stays retired, while the
        file is unchanged; a file with new text is stored and goes live, as any new version would.
        Returns the versions these files made live."""
        out = []
        await self.reload()
        for p in sorted(Path(path).glob("*.y*ml")):
            text = p.read_text(encoding="utf-8")
            name = parse_policy(text, default_name=p.stem, source=str(p)).name
            if any(v.row.spec_yaml == text for v in self._versions.get(name, {}).values()):
                retired = self.retired(name)
                state = (f"retired ({retired.retired_at.isoformat()} by {retired.retired_by})" if retired
                         else f"live at v{self._active.get(name)}")
                log.info("policy %s is %s and %s is already stored: not seeded again", name, state, p.name)
                continue
            out.append(await self.put(name, text, created_by=created_by, comment=f"from {p.name}"))
        return out

    async def _write(
        self, name: str, spec_yaml: str, created_by: str | None, comment: str | None, *, activate: bool
    ) -> PolicyVersion:
        # raises PolicyValidationError: nothing stored. Parsed on a worker thread: a large policy takes
        # seconds, which the event loop serving traffic would otherwise wait for.
        policy = await asyncio.to_thread(self.validate, name, spec_yaml)
        async with self._lock:
            for _ in range(5):
                # stored rows this schema refuses keep their numbers: a new version goes after them
                taken = [*self._versions.get(name, {}), *(v for n, v in self._unusable if n == name)]
                version = max(taken, default=0) + 1
                row = StoredPolicy(name, version, spec_yaml, self._clock(), created_by, comment)
                try:
                    await self.store.insert(row)
                except VersionConflict:
                    await self._reload_locked()  # another process wrote this version; take the next
                    continue
                pv = PolicyVersion(row, policy)
                self._versions.setdefault(name, {})[version] = pv
                if activate:
                    await self.store.set_active(name, version)
                    self._set_active(name, version)
                break
            else:
                raise VersionConflict(f"{name}: could not allocate a version")
        # Outside the lock: announcing is network I/O that reloads (ours included) need not wait for.
        # A version stored without activation is announced too: other processes list versions.
        await self._notify(name)
        return pv

    def _set_active(self, name: str, version: int) -> None:
        self._active[name] = version
        self._active_policy[name] = self._versions[name][version].policy

    def _drop_active(self, name: str) -> None:
        self._active.pop(name, None)
        self._active_policy.pop(name, None)

    async def _notify(self, name: str) -> None:
        """Announce a stored change. Never fails the change: it is committed, and polling carries it."""
        if self.notifier is None:
            return
        try:
            await self.notifier.changed(name, self._active.get(name))
        except Exception as exc:
            log.warning("policy %s: change notification failed (%s); other processes will poll it", name,
                        error_text(exc))

    # ---- reload --------------------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Pull the store's state; True when the set of versions or an active version changed."""
        async with self._lock:
            return await self._reload_locked()

    async def _reload_locked(self) -> bool:
        rows, active, retirements = await self.store.load()
        changed = False
        history: dict[str, list[Retirement]] = {}
        for r in retirements:
            history.setdefault(r.name, []).append(r)
        self._retirements = history
        for row in rows:
            known = self._versions.get(row.name, {})
            if row.version in known or (row.name, row.version) in self._unusable:
                continue
            try:
                policy = parse_policy(row.spec_yaml, require_name=row.name, source=f"{row.name} v{row.version}")
            except PolicyValidationError as exc:
                # Written by an older/newer schema, or by hand: skip it, keep serving the rest.
                self._unusable.add((row.name, row.version))
                log.error("stored policy %s v%d is invalid, ignored: %s", row.name, row.version, exc)
                continue
            self._versions.setdefault(row.name, {})[row.version] = PolicyVersion(row, policy)
            changed = True
        for name, version in active.items():
            if self._active.get(name) != version:
                if version in self._versions.get(name, {}):
                    self._set_active(name, version)
                    changed = True
                elif (name, version) not in self._reported_active:
                    self._reported_active.add((name, version))
                    log.error("active version %s v%d is missing or invalid; keeping v%s", name, version, self._active.get(name))
        # An active pointer gone from the store is a retirement (the only write that removes one).
        for name in [n for n in self._active if n not in active]:
            self._drop_active(name)
            changed = True
        return changed

    async def run_reload_loop(
        self,
        interval_s: float = 1.0,
        stop: asyncio.Event | None = None,
        *,
        pushed: Callable[[], bool] | None = None,
        pushed_interval_s: float | None = None,
    ) -> None:
        """Poll the store until ``stop`` is set. Store errors are logged and retried: a database
        hiccup must not take the current policies away.

        ``pushed()`` True means change notifications are arriving right now (a live pub/sub
        subscription reloads this registry on every change). Polling is then only a safety net for
        a notification that was lost (pub/sub is at-most-once: a publish while Redis was
        unreachable from the writer), so it runs every ``pushed_interval_s`` (2 × ``interval_s``
        by default: with the default 1 s that still bounds a lost notification's delay by the 2 s
        promise) instead of loading every policy row from every process every interval. The
        choice is re-made every ``interval_s`` without I/O, so when the subscription drops, full
        rate polling resumes within one interval.
        """
        stop = stop or asyncio.Event()
        relaxed_s = pushed_interval_s if pushed_interval_s is not None else 2 * interval_s
        loop = asyncio.get_running_loop()
        last = -math.inf
        while not stop.is_set():
            due_s = relaxed_s if pushed is not None and pushed() else interval_s
            if loop.time() - last >= due_s:
                last = loop.time()
                try:
                    if await self.reload():
                        log.info("policies reloaded: %s", {n: self._active.get(n) for n in self.names()})
                except Exception as exc:  # keep serving the policies we have
                    log.warning("policy reload failed: %s", error_text(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
