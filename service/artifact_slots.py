"""Which trained artifact each learned slot uses, shared by every gateway process through the database.

A slot is ``scorer:<name>`` (a router classifier, `plugins.scorers[name]`) or ``verifier:<name>`` (an
answer verifier, `plugins.verifiers[name]`). Activating an artifact through the admin API records it as
the slot's active row in ``router_artifacts``; every process compares the active rows with what it has
loaded, every ``policy_reload_s``, and loads what changed in a worker thread. So an activation reaches
all workers within seconds and survives restarts: the database's active row wins over the config's
``router.artifact`` / ``router.verifiers``, which only seed a slot nobody has activated.

A path given to the admin API must lie inside the configured ``router.artifacts_dir`` (symlinks resolved);
any path that does not (absent, outside, escaping through a symlink, a manifest naming a file outside
its folder) is refused with one :class:`ArtifactPathRefused`, whose message never says which.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from common.errors import error_text
from requestlog.sql import DB_ERRORS
from requestlog.tables import router_artifacts
from router.artifacts import ArtifactPathError, load_artifact, load_verifier
from router.plugins import ClassifierScorer
from router.protocols import Plugins

log = logging.getLogger("hybridgate")

KINDS = ("scorer", "verifier")
GATEWAY_ALIASES = "gateway_aliases"  # key of the row's manifest copy holding the activation's aliases


class RegistryUnavailable(Exception):
    """The artifact was loaded in this process, but the database that tells the others is away."""


class ArtifactPathRefused(Exception):
    """The path is not an artifact directory inside the artifacts directory (deliberately unspecific)."""


def confined_path(root: str | Path, path: str) -> str:
    """``path`` (absolute, or relative to ``root``) as an absolute path with symlinks resolved, if it is a
    directory strictly inside ``root``; else :class:`ArtifactPathRefused`."""
    try:
        base = Path(root).resolve()
        real = (base / path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # absent, a symlink loop, a NUL byte
        raise ArtifactPathRefused() from None
    if real == base or not real.is_relative_to(base) or not real.is_dir():
        raise ArtifactPathRefused()
    return str(real)


def slot_name(kind: str, name: str) -> str:
    if kind not in KINDS or not name:
        raise ValueError(f"bad slot {kind}:{name}")
    return f"{kind}:{name}"


def load_into_slot(slot: str, path: str, aliases: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """Load the artifact at ``path`` for ``slot`` (blocking: call it in a thread); returns (the plugin,
    its manifest). Raises OSError / ValueError / TypeError for a missing or wrong artifact."""
    if slot.partition(":")[0] == "scorer":
        clf, manifest = load_artifact(path)
        return ClassifierScorer(clf, aliases), manifest
    return load_verifier(path)


def install(plugins: Plugins, slot: str, plugin: Any) -> None:
    """Put ``plugin`` in ``slot``, and move everything alive now out of the cyclic GC's scans.

    Why the freeze: an artifact is ~10^5 long-lived objects (vocabularies, memoised words); left in the
    collected generations, every full collection walks them on the request path (a few ms of p99). The
    gateway freezes once after start-up (gateway/app.py); an artifact loaded later gets the same. No
    ``gc.collect()`` first, which would stall the event loop: cyclic garbage alive at this moment stays
    uncollected, a bounded cost per activation.
    """
    kind, _, name = slot.partition(":")
    target = plugins.scorers if kind == "scorer" else plugins.verifiers
    target[name] = plugin  # type: ignore[index]
    gc.freeze()


class ArtifactSlots:
    """This process's view: the artifact row each slot has loaded (row id), and rows that failed to
    load here (not retried every interval; a new activation has a new id)."""

    def __init__(
        self, engine: AsyncEngine, plugins: Plugins, aliases: dict[str, str], root: str | Path = "artifacts"
    ) -> None:
        self._engine = engine
        self._root = root
        self._plugins = plugins
        self._aliases = aliases
        self.loaded: dict[str, str] = {}
        self._failed: set[str] = set()
        self._activations = 0  # a sync that overlapped an activation here must not install what it read

    def seed(self, slot: str, path: str) -> None:
        """Load ``path`` into ``slot`` at start (the config's artifact; blocking, before serving). An
        activated row in the database replaces it on the first :meth:`sync`."""
        install(self._plugins, slot, load_into_slot(slot, path, self._aliases)[0])

    async def activate(self, slot: str, path: str, aliases: dict[str, str] | None = None) -> dict[str, Any]:
        """Load ``path`` into ``slot`` here at once, then record it as the slot's active row for the
        other processes. ``aliases`` (classifier model name -> gateway model name) extend the config's
        and travel with the row. Returns the row (with the manifest). ``path`` must lie inside the
        artifacts directory (:func:`confined_path`); a manifest naming files outside the artifact's own
        folder, or a directory that is no artifact, raises :class:`ArtifactPathRefused` too."""
        path = confined_path(self._root, path)
        try:
            plugin, manifest = await asyncio.to_thread(
                load_into_slot, slot, path, self._aliases | (aliases or {})
            )
        except (OSError, ArtifactPathError):
            raise ArtifactPathRefused() from None
        install(self._plugins, slot, plugin)
        stored = dict(manifest) | {GATEWAY_ALIASES: aliases or {}}
        row = {"id": uuid.uuid4().hex, "slot": slot, "version": str(manifest.get("version", "?")), "path": path,
               "created_at": datetime.now(UTC), "manifest": stored, "active": True}
        try:
            async with self._engine.begin() as conn:
                await conn.execute(router_artifacts.update().where(router_artifacts.c.slot == slot).values(active=False))
                await conn.execute(router_artifacts.insert().values(**row))
        except DB_ERRORS as exc:
            raise RegistryUnavailable(str(exc)) from exc
        finally:
            self._activations += 1
        self.loaded[slot] = row["id"]
        return row

    async def sync(self) -> None:
        """Load every slot whose active row changed since this process last looked."""
        c = router_artifacts.c
        q = sa.select(c.id, c.slot, c.path, c.manifest).where(c.active)
        seen = self._activations
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(q)).all()
        except DB_ERRORS as exc:
            log.debug("artifact sync: database unavailable (%s); keeping what is loaded", error_text(exc))
            return
        for rid, slot, path, manifest in rows:
            if self.loaded.get(slot) == rid or rid in self._failed:
                continue
            extra = (manifest or {}).get(GATEWAY_ALIASES) or {}
            try:
                plugin, _ = await asyncio.to_thread(load_into_slot, slot, path, self._aliases | extra)
            except (OSError, ValueError, TypeError) as exc:
                self._failed.add(rid)
                log.warning("artifact %s for %s cannot be loaded here (%s); keeping the current one", path, slot,
                            error_text(exc))
                continue
            if self._activations != seen:  # rows read before an activation here: next round reads afresh
                return
            install(self._plugins, slot, plugin)
            self.loaded[slot] = rid
            log.info("artifact %s now serves %s", path, slot)
