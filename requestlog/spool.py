"""Crash-safe on-disk spool: append-only segment files of JSON lines.

Why segments: a segment is appended to by exactly one writer and, once closed ("rotated"),
never changes again; replay reads closed segments oldest-first and deletes a segment only after
every record in it was confirmed written. A crash anywhere therefore costs at most a re-replay
of one segment, which the idempotent inserts make harmless.

Durability: each ``append()`` is one ``write`` + ``fsync`` (per batch, not per row). A crash
during an append may leave a torn last line; readers skip it (the rows in it were never
acknowledged as spooled, since the fsync did not return).

Several processes may share one spool directory (gateway workers): each holds an exclusive
``flock`` on its open segment, and a replayer locks a segment before reading it, so a live
writer's segment is never replayed under its feet, while segments of a dead process (whose locks
the kernel released) are picked up by any live one. New segments are created under a temporary
name and renamed only once locked, so no one can grab a segment before its owner holds it.

This module is synchronous and not thread-safe; the sink calls it from one task at a time,
via ``asyncio.to_thread`` so fsyncs never stall the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: single-process spool without locking
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("hybridgate.requestlog.spool")

SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".jsonl"
TMP_PREFIX = "tmp-"
REJECTED_FILE = "rejected.jsonl"


def _try_lock(f: BinaryIO) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _count_lines(path: Path) -> int:
    count = 0
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                count += block.count(b"\n")
    except OSError:
        pass
    return count


class _Reader:
    """A locked segment being replayed, with the offset of the chunk in flight."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self.path = path
        self.f = f
        self.chunk_start = 0
        self.chunk_records = 0
        self.consumed = 0  # records confirmed written so far
        self.at_eof = False


class Spool:
    """Append-only JSON-lines segments in ``directory`` (see module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], *, max_segment_bytes: int = 64 << 20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_segment_bytes = max_segment_bytes
        self.torn_lines = 0
        self._active: BinaryIO | None = None
        self._active_path: Path | None = None
        self._active_size = 0
        self._active_records = 0
        self._backlog: list[Path] = []
        self._counts: dict[Path, int] = {}  # records per closed segment (for metrics)
        self._reader: _Reader | None = None
        self._last_ns = 0
        self.rescan()

    # ------------------------------------------------------------------ state

    @property
    def pending(self) -> bool:
        """True while this spool holds records not yet confirmed written."""
        return bool(self._backlog) or self._reader is not None or self._active_size > 0

    def pending_records(self) -> int:
        """Records waiting for replay (exact for this process's data, counted for found files)."""
        total = self._active_records + sum(self._counts.get(p, 0) for p in self._backlog)
        if self._reader is not None:
            total += max(self._counts.get(self._reader.path, 0) - self._reader.consumed, 0)
        return total

    def pending_bytes(self) -> int:
        """Approximate bytes waiting for replay (for metrics)."""
        total = self._active_size
        paths = list(self._backlog)
        if self._reader is not None:
            paths.append(self._reader.path)
        for path in paths:
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        if self._reader is not None:
            total -= self._reader.chunk_start
        return max(total, 0)

    def rescan(self) -> None:
        """Pick up segments left by earlier or dead processes (called at start and periodically)."""
        known = set(self._backlog)
        if self._reader is not None:
            known.add(self._reader.path)
        if self._active_path is not None:
            known.add(self._active_path)
        for path in sorted(self.dir.iterdir()):
            name = path.name
            if name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX):
                if path not in known:
                    self._backlog.append(path)
                    self._counts[path] = _count_lines(path)
            elif name.startswith(TMP_PREFIX):
                self._remove_dead_tmp(path)
        self._backlog.sort()

    def _remove_dead_tmp(self, path: Path) -> None:
        # a process died between creating and naming its segment: the file is empty
        try:
            with path.open("rb") as f:
                if _try_lock(f) and path.stat().st_size == 0:
                    path.unlink()
        except OSError:
            pass

    # ------------------------------------------------------------------ writing

    def append(self, lines: Sequence[bytes]) -> None:
        """Append records (each a newline-terminated line) durably: returns after fsync."""
        if not lines:
            return
        if self._active is None or self._active_size >= self.max_segment_bytes:
            self._rotate()
            self._open_active()
        f = self._active
        assert f is not None
        data = b"".join(lines)
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            # leave no partial line behind, or the next append would glue onto it
            with contextlib.suppress(Exception):
                f.seek(0, os.SEEK_END)
                os.ftruncate(f.fileno(), self._active_size)
            raise
        self._active_size += len(data)
        self._active_records += len(lines)

    def _open_active(self) -> None:
        now = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = now
        name = f"{now:020d}-{os.getpid()}-{secrets.token_hex(3)}{SEGMENT_SUFFIX}"
        tmp = self.dir / f"{TMP_PREFIX}{name}"
        final = self.dir / f"{SEGMENT_PREFIX}{name}"
        f = tmp.open("ab")
        try:
            if not _try_lock(f):  # pragma: no cover - a fresh random name cannot be locked
                raise OSError(f"cannot lock new spool segment {tmp}")
            os.rename(tmp, final)
        except BaseException:
            f.close()
            raise
        _fsync_dir(self.dir)
        self._active, self._active_path, self._active_size = f, final, 0
        self._active_records = 0

    def _rotate(self) -> None:
        """Close the active segment (releasing its lock) and queue it for replay."""
        if self._active is None:
            return
        f, path, size = self._active, self._active_path, self._active_size
        self._active, self._active_path, self._active_size = None, None, 0
        f.close()
        assert path is not None
        if size == 0:
            with contextlib.suppress(OSError):
                path.unlink()
        else:
            self._backlog.append(path)
            self._counts[path] = self._active_records
        self._active_records = 0

    def write_rejected(self, lines: Sequence[bytes]) -> None:
        """Keep records the database refused as data errors, for a human to look at."""
        if not lines:
            return
        with (self.dir / REJECTED_FILE).open("ab") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ replay

    def read_chunk(self, max_records: int) -> list[bytes] | None:
        """The next up-to-``max_records`` lines to replay, oldest first; None when nothing is left.

        Each chunk must be followed by :meth:`commit` (written) or :meth:`rollback` (not).
        """
        reader = self._reader or self._open_next_reader()
        if reader is None:
            return None
        f = reader.f
        reader.chunk_start = f.tell()
        lines: list[bytes] = []
        while len(lines) < max_records:
            line = f.readline()
            if not line:
                reader.at_eof = True
                break
            if not line.endswith(b"\n"):
                self.torn_lines += 1
                log.warning("skipping torn last line (%d bytes) in %s", len(line), reader.path.name)
                reader.at_eof = True
                break
            lines.append(line)
        if not reader.at_eof and not f.peek(1):
            reader.at_eof = True
        reader.chunk_records = len(lines)
        return lines

    def commit(self) -> None:
        """The last chunk is in the database: move on, deleting the segment once finished."""
        reader = self._reader
        if reader is None:
            return
        reader.consumed += reader.chunk_records
        reader.chunk_records = 0
        if not reader.at_eof:
            return
        self._reader = None
        self._counts.pop(reader.path, None)
        with contextlib.suppress(FileNotFoundError):
            reader.path.unlink()
        reader.f.close()

    def rollback(self) -> None:
        """The last chunk was not written: read it again next time."""
        reader = self._reader
        if reader is None:
            return
        reader.f.seek(reader.chunk_start)
        reader.chunk_records = 0
        reader.at_eof = False

    def _open_next_reader(self) -> _Reader | None:
        if not self._backlog and self._active_size > 0:
            self._rotate()
        while self._backlog:
            path = self._backlog.pop(0)
            try:
                f = path.open("rb")
            except FileNotFoundError:  # replayed and deleted by another process
                self._counts.pop(path, None)
                continue
            if not _try_lock(f) or not path.exists():
                # a live writer's segment, another replayer has it, or it was just deleted
                f.close()
                self._counts.pop(path, None)
                continue
            self._reader = _Reader(path, f)
            return self._reader
        return None

    def close(self) -> None:
        """Close files and release locks; unreplayed data stays on disk for the next run."""
        if self._active is not None:
            f, size, path = self._active, self._active_size, self._active_path
            self._active, self._active_path, self._active_size = None, None, 0
            f.close()
            if size == 0 and path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()
            elif path is not None:
                self._backlog.append(path)
                self._counts[path] = self._active_records
            self._active_records = 0
        if self._reader is not None:
            self._backlog.insert(0, self._reader.path)
            self._reader.f.close()
            self._reader = None
