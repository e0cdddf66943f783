"""Write-ahead log of request-log records: on local disk before (or as) the response completes.

The sink hands every recorded request to :class:`Wal` as well as to its in-memory queue. A
background task group-commits what arrived: one ``write`` + ``fsync`` for everything recorded
since the last commit, at most one commit per ``commit_ms`` window (0: back to back, so whatever
arrives during one fsync shares the next), however many requests there are. Callers that must not answer before their row is durable (``durability:
always``) await :meth:`Wal.durable`; with ``batch`` nobody waits and a crash loses at most the
records of the commit window still open.

The database writer writes from its in-memory copy of the same records (in the order the WAL
holds them) and then reports how far it got (:meth:`Wal.handled`): a WAL segment is deleted once
every record in it is in the database or in the spill spool, and the active segment is truncated
when everything in it is handled. Segments stay locked (``flock``) while their process lives; a
segment whose lock is free belongs to a process that died, and :func:`recover` moves it into the
spool directory, whose replay (idempotent inserts) writes exactly the records that were not in
the database yet and skips the others.

Segments live in ``<spool_dir>/wal/`` with the spool's naming, so a recovered segment is replayed
in time order with the spool's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common.errors import error_text

from .spool import SEGMENT_PREFIX, SEGMENT_SUFFIX, TMP_PREFIX, _fsync_dir, _try_lock

log = logging.getLogger("hybridgate.requestlog.wal")

WAL_DIR = "wal"


@dataclass(slots=True)
class _Segment:
    path: Path
    f: BinaryIO  # held open: its flock says "owner alive"
    last_seq: int


def recover(spool_dir: Path) -> int:
    """Move WAL segments of dead processes into the spool directory for replay; returns how many.

    A segment is a dead process's when its lock can be taken. Renaming keeps the name (creation
    time first), so replay order stays time order. Empty ones are deleted.
    """
    wal_dir = spool_dir / WAL_DIR
    if not wal_dir.is_dir():
        return 0
    moved = 0
    for path in sorted(wal_dir.iterdir()):
        if not (path.name.startswith((SEGMENT_PREFIX, TMP_PREFIX)) and path.name.endswith(SEGMENT_SUFFIX)):
            continue
        try:
            with path.open("rb") as f:
                if not _try_lock(f):
                    continue  # a live process's segment
                if path.stat().st_size == 0 or path.name.startswith(TMP_PREFIX):
                    path.unlink()
                    continue
                name = path.name if path.name.startswith(SEGMENT_PREFIX) else SEGMENT_PREFIX + path.name
                os.rename(path, spool_dir / name)  # still locked by us: no replayer reads it half-moved
                moved += 1
        except FileNotFoundError:
            continue  # renamed or deleted by its owner meanwhile
        except OSError as exc:
            log.warning("cannot recover WAL segment %s: %s", path.name, error_text(exc))
    if moved:
        _fsync_dir(spool_dir)
        _fsync_dir(wal_dir)
        log.info("recovered %d request log WAL segment(s) of a stopped process for replay", moved)
    return moved


class Wal:
    """One process's WAL (see module docstring). Event-loop side: :meth:`append` (sync, no I/O),
    :meth:`durable`, :meth:`handled`; the disk work runs in :meth:`run` via a worker thread.

    Args:
        spool_dir: the sink's spool directory; segments go to its ``wal/`` subdirectory.
        commit_ms: group-commit window: how long the committer gathers records before one fsync.
        fsync: False writes without fsync (the OS page cache survives a process kill, not a
            power loss); used for measurements.
        max_segment_bytes: a segment larger than this is closed and a new one opened.
        encode: turns a queued entry into one newline-terminated line (runs in the worker thread).
    """

    def __init__(
        self,
        spool_dir: Path,
        *,
        encode: Callable[[object], bytes],
        commit_ms: float = 5.0,
        fsync: bool = True,
        max_segment_bytes: int = 4 << 20,
    ) -> None:
        self.dir = spool_dir / WAL_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self._encode = encode
        self._window = commit_ms / 1000.0
        self._fsync = fsync
        self._max_bytes = max_segment_bytes
        self._pending: list[object] = []
        self._seq = 0  # records appended (the last one's sequence number)
        self._durable_seq = 0
        self._handled_seq = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._lock = threading.Lock()  # records may come from worker threads
        self._io = asyncio.Lock()  # one disk operation at a time (commit vs. checkpoint)
        self._active: _Segment | None = None
        self._active_size = 0
        self._closed: list[_Segment] = []
        self._last_ns = 0
        self.commits = 0
        self.failures = 0

    # ------------------------------------------------------------------ event-loop side

    def append(self, entry: object) -> int:
        """Queue one record for the next group commit; returns its sequence number. Thread-safe."""
        with self._lock:
            self._pending.append(entry)
            self._seq += 1
            seq, first = self._seq, len(self._pending) == 1
        if first:
            if self._loop is None or threading.get_ident() == self._loop_thread:
                self._wake.set()
            else:
                self._loop.call_soon_threadsafe(self._wake.set)
        return seq

    @property
    def seq(self) -> int:
        return self._seq

    async def durable(self, seq: int | None = None) -> None:
        """Return once record ``seq`` (default: everything appended so far) is on disk."""
        seq = self._seq if seq is None else seq
        if seq <= self._durable_seq:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        await asyncio.shield(fut)

    def handled(self, seq: int) -> None:
        """Records up to ``seq`` are in the database or the spill spool: their segments can go."""
        if seq > self._handled_seq:
            self._handled_seq = seq

    # ------------------------------------------------------------------ committer

    async def run(self, stop: asyncio.Event) -> None:
        """Group-commit until ``stop`` is set and nothing is pending."""
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        while True:
            self._wake.clear()  # before looking: a record from another thread re-sets it
            if not self._pending:
                if stop.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.25)
                await self.checkpoint()
                continue
            if self._window > 0 and not stop.is_set():
                await asyncio.sleep(self._window)  # gather the group
            await self.commit()

    async def commit(self) -> None:
        """Write and fsync everything pending now; wake whoever waits for it."""
        with self._lock:
            batch, self._pending = self._pending, []
            upto = self._seq
        if not batch:
            return
        # records the database (or the spill spool) already has need no crash protection
        skip = max(0, min(self._handled_seq - (upto - len(batch)), len(batch)))
        try:
            if skip < len(batch):
                async with self._io:
                    await asyncio.to_thread(self._write, batch[skip:], upto)
            self.commits += 1
        except Exception as exc:
            # A full or failing disk: the records are still in the sink's queue and go to the
            # database as usual; only crash protection is missing for them.
            self.failures += 1
            log.error("request log WAL write failed (%s); %d records not crash-protected", error_text(exc), len(batch))
        self._durable_seq = upto
        waiting = []
        for seq, fut in self._waiters:
            if seq <= upto:
                if not fut.done():
                    fut.set_result(None)
            else:
                waiting.append((seq, fut))
        self._waiters = waiting
        await self.checkpoint()

    async def checkpoint(self) -> None:
        """Delete closed segments, and empty the active one, whose records are all handled."""
        async with self._io:  # judged under the lock: a commit in flight may be adding to the file
            handled = self._handled_seq
            closed_done = bool(self._closed) and self._closed[0].last_seq <= handled
            active = self._active
            active_done = active is not None and self._active_size > 0 and active.last_seq <= handled
            if closed_done or active_done:
                await asyncio.to_thread(self._drop_handled, handled, True)

    # ------------------------------------------------------------------ disk (worker thread)

    def _write(self, batch: list[object], upto: int) -> None:
        data = b"".join(self._encode(e) for e in batch)
        if self._active is None or self._active_size >= self._max_bytes:
            self._rotate(upto - len(batch))
        seg = self._active
        assert seg is not None
        seg.f.write(data)
        seg.f.flush()
        if self._fsync:
            os.fsync(seg.f.fileno())
        self._active_size += len(data)
        seg.last_seq = upto

    def _rotate(self, before: int) -> None:
        if self._active is not None:
            self._closed.append(self._active)
        now = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = now
        name = f"{now:020d}-{os.getpid()}-{secrets.token_hex(3)}{SEGMENT_SUFFIX}"
        tmp, final = self.dir / f"{TMP_PREFIX}{name}", self.dir / f"{SEGMENT_PREFIX}{name}"
        f = tmp.open("ab")
        if not _try_lock(f):  # pragma: no cover - a fresh random name cannot be locked
            f.close()
            raise OSError(f"cannot lock new WAL segment {tmp}")
        os.rename(tmp, final)
        _fsync_dir(self.dir)
        self._active, self._active_size = _Segment(final, f, before), 0

    def _drop_handled(self, handled: int, truncate_active: bool = False) -> None:
        while self._closed and self._closed[0].last_seq <= handled:
            seg = self._closed.pop(0)
            with contextlib.suppress(OSError):
                seg.path.unlink()
            seg.f.close()
        seg = self._active
        if truncate_active and seg is not None and self._active_size > 0 and seg.last_seq <= handled:
            # everything in it is safe elsewhere: reuse the file instead of making a new one
            os.ftruncate(seg.f.fileno(), 0)
            self._active_size = 0

    def close(self) -> None:
        """Close every segment, deleting those fully handled; the rest stay for :func:`recover`."""
        self._drop_handled(self._handled_seq)
        segs = [*self._closed, *([self._active] if self._active is not None else [])]
        self._closed, self._active = [], None
        for seg in segs:
            if seg.last_seq <= self._handled_seq or seg.path.stat().st_size == 0:
                with contextlib.suppress(OSError):
                    seg.path.unlink()
            seg.f.close()  # releases the lock: the next start (or a sibling) recovers it
