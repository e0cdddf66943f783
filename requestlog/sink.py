"""The gateway's request log: ``record()`` on the request path, durable writes in the background.

``record()`` only appends to an in-memory deque: no I/O, no awaiting, no exceptions, so logging
costs the request path microseconds whatever the database is doing. One background task (the
only consumer, which keeps ordering simple) moves records on:

* **direct mode** (database up, spool empty): batches of up to ``batch_max_rows`` records, or whatever
  arrived within ``batch_max_ms``, go to the database as idempotent multi-row inserts.
* **spool mode** (a write failed, or a spool exists): the failed batch and everything queued
  behind it are appended to the on-disk spool (fsync per batch) and the gateway keeps serving.
  The database is probed with exponential backoff; once it answers, the spool is replayed in
  order, chunk by chunk, and only then does the task return to direct mode. While the spool is
  non-empty, new records queue behind it (and spill to it whenever the database is down or the
  queue outgrows ``max_queue``), so records reach the database in the order they were recorded
  (per process).

Crash safety (``durability``): with ``batch`` or ``always`` every record also goes to a local
write-ahead log (:mod:`requestlog.wal`), group-committed (every ``wal_commit_ms`` with ``batch``;
back to back with ``always``, where whatever arrives during one fsync shares the next); the writer reports
how far the database (or the spill spool) has taken the queue, which lets the WAL drop what is
safe. After a crash (``kill -9``) the next start moves the dead process's WAL segments into the
spool and replays them. ``always`` makes :meth:`LogSink.durable` wait for the group commit that
holds the caller's record, so a response completes only once its row is on disk; ``batch`` does
not wait, and a crash loses at most the records of the open commit window; ``off`` keeps records
in memory only until the database (or the spool, while it is down) has them.

Nothing is ever written twice (``ON CONFLICT (id) DO NOTHING``) and nothing recorded is dropped
short of the disk failing while the database is down. Records the database refuses as data
errors are set aside in ``<spool_dir>/rejected.jsonl`` instead of blocking the spool forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from common.errors import error_text

from .codec import Record, decode_record, encode_record, to_record
from .rows import AttemptRow, RequestRow
from .spool import Spool
from .wal import Wal, recover
from .writer import DbWriter, Unavailable, make_engine

log = logging.getLogger("hybridgate.requestlog")

DURABILITY_MODES = ("off", "batch", "always")

_Entry = tuple[RequestRow, list[AttemptRow]] | Record
"""A queued record: as recorded (dataclasses), or already converted (put back after a failed spill)."""


def _as_record(entry: _Entry) -> Record:
    request, attempts = entry
    if isinstance(request, dict):
        return entry  # type: ignore[return-value]
    return to_record(request, attempts)  # type: ignore[arg-type]


def _wal_line(entry: object) -> bytes:
    return encode_record(_as_record(entry))  # type: ignore[arg-type]


class LogSink:
    """Durable, non-blocking request log (see module docstring).

    Args:
        db_url: SQLAlchemy URL, async or sync form (``postgresql+asyncpg://...``,
            ``sqlite+aiosqlite:///./hybridgate.db``); ignored when ``engine`` is given.
        spool_dir: directory of the disk spool; may be shared by several processes.
        batch_max_rows: most records (requests, each with its attempts) per database write.
        batch_max_ms: longest a record waits in memory before a write is attempted.
        max_queue: records held in memory before spilling to the spool instead.
        probe_initial_s, probe_max_s: backoff between database probes while it is down.
        write_timeout_s: a write taking longer counts as the database being unavailable.
        connect_timeout_s: opening a database connection taking longer counts the same.
        close_timeout_s: how long ``aclose()`` keeps trying the database before leaving the
            rest in the spool.
        engine: an existing async engine to use (then not disposed by ``aclose()``).
        durability: ``off``, ``batch`` or ``always`` (see module docstring).
        wal_commit_ms: the WAL's group-commit window with ``batch`` (the most a crash can lose);
            ``always`` commits without a window (whatever arrives during one fsync shares the next).
        wal_fsync: False skips the WAL's fsync (survives a process crash, not a power loss).
    """

    def __init__(
        self,
        db_url: str = "sqlite+aiosqlite:///./hybridgate.db",
        *,
        spool_dir: str | os.PathLike[str] = "./var/spool",
        batch_max_rows: int = 500,
        batch_max_ms: float = 50.0,
        max_queue: int = 50_000,
        probe_initial_s: float = 0.5,
        probe_max_s: float = 30.0,
        write_timeout_s: float = 15.0,
        connect_timeout_s: float = 5.0,
        close_timeout_s: float = 10.0,
        engine: AsyncEngine | None = None,
        durability: str = "batch",
        wal_commit_ms: float = 5.0,
        wal_fsync: bool = True,
    ) -> None:
        if batch_max_rows < 1 or max_queue < 1:
            raise ValueError("batch_max_rows and max_queue must be positive")
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY_MODES)}")
        self._db_url = db_url
        self._spool_dir = Path(spool_dir)
        self._batch_max_rows = batch_max_rows
        self._interval = batch_max_ms / 1000.0
        self._max_queue = max_queue
        self._probe_initial = probe_initial_s
        self._probe_max = probe_max_s
        self._write_timeout = write_timeout_s
        self._connect_timeout = connect_timeout_s
        self._close_timeout = close_timeout_s
        self._own_engine = engine is None
        self._engine = engine

        self._queue: deque[_Entry] = deque()
        self.durability = durability
        # `always`: a commit starts as soon as the previous one ends (requests wait for it, so no
        # added delay); records arriving during an fsync share the next one. `batch`: one commit
        # per window at most, since nobody waits.
        self._wal_options = {
            "commit_ms": 0.0 if durability == "always" else wal_commit_ms,
            "fsync": wal_fsync,
        }
        self._wal: Wal | None = None
        self._wal_task: asyncio.Task[None] | None = None
        self._wal_stop = asyncio.Event()
        self._taken = 0  # records that left the queue for good (database, spool): a prefix of the WAL
        self._writer: DbWriter | None = None
        self._spool: Spool | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake = asyncio.Event()
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._closed = False
        self._close_deadline = 0.0

        self._db_up = False
        self._probe_delay = probe_initial_s
        self._next_probe = 0.0
        self._next_rescan = 0.0

        self._written = 0
        self._spooled = 0
        self._replayed = 0
        self._rejected = 0
        self._dropped = 0
        self._write_errors = 0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ request path

    def record(self, request: RequestRow, attempts: list[AttemptRow]) -> None:
        """Queue one request and its attempts for logging. Never blocks, never raises.

        The sink takes ownership of the objects: do not mutate them afterwards.
        """
        try:
            if self._closed:
                self._record_after_close(request, attempts)
                return
            queue = self._queue
            queue.append((request, attempts))
            if self._wal is not None:
                self._wal.append((request, attempts))
            if len(queue) >= self._batch_max_rows and not self._wake.is_set():
                self._wake_worker()
        except Exception:  # pragma: no cover - defensive: logging must never break a request
            self._dropped += 1

    async def durable(self) -> None:
        """With ``durability: always``, wait until everything recorded so far is on local disk
        (the WAL's next group commit); otherwise return at once. Call it before completing a
        response whose row was just recorded."""
        if self.durability == "always" and self._wal is not None and self._wal_task is not None:
            await self._wal.durable()

    def _wake_worker(self) -> None:
        if self._loop is None:
            return  # not started yet: start() drains the queue
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:  # recorded from a worker thread
            self._loop.call_soon_threadsafe(self._wake.set)

    def _record_after_close(self, request: RequestRow, attempts: list[AttemptRow]) -> None:
        # Shutdown stragglers (a stream finishing after aclose): straight to disk, synchronously;
        # rare, and better than losing them. The next sink replays them.
        try:
            spool = Spool(self._spool_dir)
            try:
                spool.append([encode_record(to_record(request, attempts))])
                self._spooled += 1
            finally:
                spool.close()
        except Exception:
            self._dropped += 1
            log.exception("could not spool a request recorded after close")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the spool, connect, and start the background writer (replays any old spool)."""
        if self._task is not None:
            return
        if self._closed:
            raise RuntimeError("LogSink cannot be restarted after aclose()")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await asyncio.to_thread(self._spool_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(recover, self._spool_dir)  # WALs of crashed processes: replay them
        self._spool = await asyncio.to_thread(Spool, self._spool_dir)
        if self.durability != "off":
            self._wal = Wal(self._spool_dir, encode=_wal_line, **self._wal_options)
            self._wal_stop.clear()
            # Records queued before start join the WAL now, in queue order.
            for entry in self._queue:
                self._wal.append(entry)
            self._wal_task = asyncio.create_task(self._wal.run(self._wal_stop), name="requestlog-wal")
        if self._engine is None:
            self._engine = make_engine(
                self._db_url, connect_timeout_s=self._connect_timeout, command_timeout_s=self._write_timeout)
        self._writer = DbWriter(self._engine, write_timeout_s=self._write_timeout)
        self._db_up = await self._writer.ping()
        if not self._db_up:
            log.warning("request log database unreachable at start; logging to spool %s", self._spool_dir)
            self._schedule_probe()
        if self._spool.pending:
            log.info("replaying request log spool left in %s", self._spool_dir)
        self._next_rescan = time.monotonic() + 30.0
        self._task = asyncio.create_task(self._run(), name="requestlog-writer")

    async def aclose(self) -> None:
        """Stop the writer: everything recorded goes to the database if it is up (within
        ``close_timeout_s``), the rest to the spool, which the next start replays."""
        if self._closed:
            return
        self._closing = True
        self._close_deadline = time.monotonic() + self._close_timeout
        self._next_probe = 0.0  # one last look at the database
        if self._task is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._task), self._close_timeout + self._write_timeout + 5
                )
            except TimeoutError:
                log.error("request log writer did not stop in time; cancelling it")
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        elif self._queue:  # recorded, but never started
            self._spool = await asyncio.to_thread(Spool, self._spool_dir)
        # Records that arrived after the writer's last look (or all of them, if it was cancelled
        # or never ran). No await between the last check and _closed: later ones take the
        # after-close path.
        while self._queue and self._spool is not None:
            before = len(self._queue)
            await self._spill_queue()
            if len(self._queue) >= before:  # the disk refuses: nothing more we can do
                self._dropped += len(self._queue)
                self._queue.clear()
        self._closed = True
        await self._close_wal()
        for fut in self._flush_waiters:
            if not fut.done():
                fut.set_result(None)
        self._flush_waiters.clear()
        if self._spool is not None:
            await asyncio.to_thread(self._spool.close)
        if self._engine is not None and self._own_engine:
            await self._engine.dispose()

    async def _close_wal(self) -> None:
        wal, task = self._wal, self._wal_task
        if wal is None:
            return
        if task is not None:
            self._wal_stop.set()
            with contextlib.suppress(BaseException):
                await task
        wal.handled(self._taken)
        await asyncio.to_thread(wal.close)
        self._wal_task = None

    async def _report_handled(self) -> None:
        """Tell the WAL how far the queue is safe (database or spool), so it can drop that part."""
        if self._wal is not None:
            self._wal.handled(self._taken)
            await self._wal.checkpoint()

    async def flush(self) -> None:
        """Wait until everything recorded so far is in the database, or, while the database is
        unreachable (probed once more right now), durably in the spool."""
        if self._task is None or self._task.done() or self._closed:
            return  # not running: nothing will move until start(); aclose() spools the rest
        fut = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(fut)
        self._next_probe = min(self._next_probe, time.monotonic())
        self._wake.set()
        await fut

    async def ping(self) -> bool:
        """Whether the database answers now (for /readyz). Never raises."""
        if self._writer is None:
            return False
        return await self._writer.ping()

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and /readyz; counts are records (a request with its attempts)."""
        spool = self._spool
        return {
            "queued": len(self._queue),
            "written": self._written,
            "spooled": self._spooled,
            "replayed": self._replayed,
            "rejected": self._rejected,
            "dropped": self._dropped,
            "write_errors": self._write_errors,
            "spool_pending": bool(spool is not None and spool.pending),
            "spooled_pending": spool.pending_records() if spool is not None else 0,
            "spool_bytes": spool.pending_bytes() if spool is not None else 0,
            "db_up": self._db_up,
            "durability": self.durability,
            "wal_commits": self._wal.commits if self._wal is not None else 0,
            "wal_failures": self._wal.failures if self._wal is not None else 0,
            "last_error": self._last_error,
        }

    # ------------------------------------------------------------------ background task

    async def _run(self) -> None:
        while True:
            # Only flushes requested before a step began are answered by it: a step already
            # under way may have skipped the probe that flush() asked for.
            served: list[asyncio.Future[None]] = []
            try:
                if not self._closing:
                    await self._wait()
                served = list(self._flush_waiters)
                await self._step()
                if self._closing and self._done_closing():
                    break
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop logging: keep rows, retry next round
                log.exception("request log writer step failed")
                await asyncio.sleep(self._interval)
            finally:
                self._notify_flushers(served)

    def _done_closing(self) -> bool:
        assert self._spool is not None
        if not self._queue and not (self._db_up and self._spool.pending):
            return True
        return time.monotonic() >= self._close_deadline

    async def _wait(self) -> None:
        assert self._spool is not None
        if self._flush_waiters:
            return
        if self._db_up and self._spool.pending:
            return  # replaying: keep going
        if len(self._queue) >= self._batch_max_rows:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._interval)

    async def _step(self) -> None:
        spool, writer = self._spool, self._writer
        assert spool is not None and writer is not None
        now = time.monotonic()
        if not self._db_up and now >= self._next_probe:
            if await writer.ping():
                self._mark_up()
            else:
                self._schedule_probe()
        if now >= self._next_rescan:
            self._next_rescan = now + 30.0
            await asyncio.to_thread(recover, self._spool_dir)  # WALs of processes that died meanwhile
            await asyncio.to_thread(spool.rescan)  # segments of processes that died meanwhile

        if self._closing and time.monotonic() >= self._close_deadline:
            await self._spill_queue()
            return

        if spool.pending:
            if self._db_up:
                await self._replay_chunk()
            if not self._db_up or len(self._queue) >= self._max_queue:
                await self._spill_queue()
            return

        if not self._db_up:
            await self._spill_queue()
            return

        while self._queue:
            if len(self._queue) >= self._max_queue:
                # the database is up but slower than the traffic: let the disk hold the backlog
                # (replayed at the database's pace) rather than memory
                await self._spill_queue()
                return
            batch = self._take(self._batch_max_rows)
            records = await self._convert(batch)
            try:
                result = await writer.write(records)
            except Exception as exc:  # Unavailable, or a bug: either way keep the rows
                self._log_unexpected(exc)
                self._mark_down(exc)
                if await self._spill(records):  # the failed batch first: it is older than the queue
                    await self._spill_queue()
                return
            self._written += result.written
            await self._reject(result.rejected)
            await self._report_handled()
            if len(self._queue) < self._batch_max_rows and not self._flush_waiters and not self._closing:
                return  # a partial batch left: let it fill up for one interval

    def _take(self, n: int) -> list[_Entry]:
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(n, len(queue)))]
        self._taken += len(batch)
        return batch

    async def _replay_chunk(self) -> None:
        spool, writer = self._spool, self._writer
        assert spool is not None and writer is not None
        lines = await asyncio.to_thread(spool.read_chunk, self._batch_max_rows)
        if lines is None:
            return
        records: list[Record] = []
        corrupt: list[tuple[bytes, str]] = []
        for line in lines:
            try:
                records.append(decode_record(line))
            except Exception as exc:
                corrupt.append((line, f"undecodable spool line: {exc}"))
        try:
            result = await writer.write(records)
        except Exception as exc:  # Unavailable, or a bug: either way replay again later
            self._log_unexpected(exc)
            await asyncio.to_thread(spool.rollback)
            self._mark_down(exc)
            return
        if corrupt:
            await self._reject_raw(corrupt)
        await self._reject(result.rejected)
        await asyncio.to_thread(spool.commit)
        self._written += result.written
        self._replayed += result.written
        if not spool.pending:
            log.info("request log spool replayed; back to direct writes")

    async def _spill_queue(self) -> None:
        """Move everything queued in memory to the spool, in order."""
        while self._queue:
            batch = self._take(max(self._batch_max_rows, 1000))
            if not await self._spill(await self._convert(batch)):
                return

    async def _convert(self, batch: list[_Entry]) -> list[Record]:
        """Insert parameters of queued entries; entries that are not rows at all (a caller's
        bug) are set aside as rejected instead of failing the whole batch."""
        try:
            return [_as_record(e) for e in batch]
        except Exception:
            pass
        records: list[Record] = []
        bad: list[tuple[bytes, str]] = []
        for entry in batch:
            try:
                records.append(_as_record(entry))
            except Exception as exc:
                bad.append((repr(entry).encode(), f"not a RequestRow/AttemptRow record: {exc!r}"))
        await self._reject_raw(bad)
        return records

    async def _spill(self, records: list[Record]) -> bool:
        """Append records to the spool; on disk failure put them back in front of the queue."""
        assert self._spool is not None
        if not records:
            return True
        try:
            lines = [encode_record(r) for r in records]
            await asyncio.to_thread(self._spool.append, lines)
        except Exception as exc:
            # Disk trouble (full?) while the database is unavailable: hold the records in memory
            # up to max_queue; beyond that the newest are dropped, counted and logged loudly.
            self._queue.extendleft(reversed(records))
            self._taken -= len(records)
            overflow = len(self._queue) - self._max_queue
            for _ in range(max(overflow, 0)):
                self._queue.pop()
            self._dropped += max(overflow, 0)
            log.error("cannot write request log spool (%s); %d records dropped so far", error_text(exc), self._dropped)
            return False
        self._spooled += len(records)
        await self._report_handled()
        return True

    async def _reject(self, rejected: list[tuple[Record, str]]) -> None:
        if rejected:
            await self._reject_raw([(encode_record(rec), err) for rec, err in rejected])

    async def _reject_raw(self, items: list[tuple[bytes, str]]) -> None:
        assert self._spool is not None
        self._rejected += len(items)
        lines = [
            orjson.dumps({"error": err, "record": line.decode("utf-8", "replace").rstrip("\n")}) + b"\n"
            for line, err in items
        ]
        try:
            await asyncio.to_thread(self._spool.write_rejected, lines)
        except Exception:
            log.exception("cannot write rejected request log records")

    # ------------------------------------------------------------------ db state

    @staticmethod
    def _log_unexpected(exc: BaseException) -> None:
        if not isinstance(exc, Unavailable):
            log.error("unexpected error writing the request log; keeping the rows", exc_info=exc)

    def _mark_up(self) -> None:
        if not self._db_up:
            log.info("request log database reachable again")
        self._db_up = True
        self._probe_delay = self._probe_initial

    def _mark_down(self, exc: BaseException) -> None:
        self._write_errors += 1
        self._last_error = error_text(exc)[:500]
        if self._db_up:
            log.warning(
                "request log database unavailable (%s); spooling to %s", self._last_error, self._spool_dir
            )
        self._db_up = False
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        self._next_probe = time.monotonic() + self._probe_delay
        self._probe_delay = min(self._probe_delay * 2, self._probe_max)

    def _notify_flushers(self, served: list[asyncio.Future[None]]) -> None:
        if not served or self._queue:
            return
        assert self._spool is not None
        if self._db_up and self._spool.pending:
            return
        done = set(map(id, served))
        self._flush_waiters = [f for f in self._flush_waiters if id(f) not in done]
        for fut in served:
            if not fut.done():
                fut.set_result(None)
