"""Durable chat history: ``history.json`` snapshot + append-only journal.

The shape of Redis' append-only file (docs/architecture.md#storage):

* Every acknowledged change (a message, a read marker) is one JSON line
  appended to ``history.journal`` *before* the reply is sent, so it survives
  ``kill -9`` (the bytes are in the OS). ``fsync="everysec"`` (default) flushes
  to the disk once a second; ``fsync="always"`` flushes before the reply, one
  ``fsync`` per event-loop iteration shared by every pending append (group
  commit), so it also survives power loss.
* Appending is O(1) whatever the history size.
* Compaction writes the whole state as a readable ``history.json`` (temp file,
  fsync, rename). It runs in a forked child (Redis' BGREWRITEAOF) so the event
  loop never stalls on a large history: the parent renames the journal to a
  segment ``history.journal.<n>``, starts a fresh journal, forks; the child
  writes the snapshot from its copy-on-write view of memory; the parent
  deletes the segments once the child succeeds. A clean shutdown compacts in
  process and leaves an empty journal.
* Loading replays the snapshot, then the segments, then the journal. Replay is
  idempotent (messages with an id already loaded are skipped, read markers only
  move forward), so a crash at any point of a compaction loses nothing. A torn
  last line is dropped with a warning; a bad line anywhere else refuses to start.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from sys import intern
from typing import Any
from urllib.parse import urlsplit

from .protocol import dumps
from .storage_files import StorageUnavailable, StoreError, fsync_dir, load_json_file

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
#: In a data directory whose history is in PostgreSQL (``--database-url``, the import).
MOVED_MARKER = "HISTORY-IN-POSTGRESQL.txt"
JOURNAL_FILE = "history.journal"

FORMAT_VERSION = 1

#: Compact once the journal exceeds the snapshot's size (Redis'
#: auto-aof-rewrite-percentage 100), and never for less than this, so the
#: total cost of compaction stays proportional to what was appended.
MIN_COMPACT_BYTES = 16 * 1024 * 1024
#: How much the compacting child yields to the core when they share a CPU (nice(2)): the
#: least priority, ~1.5 % of a CPU the core keeps busy (nice 10 took ~10 %: the core
#: showed 0.89–0.94 of its CPU in a benchmark whose journal compacted every few seconds).
COMPACTION_NICENESS = 19
FSYNC_MODES = ("always", "everysec")
FSYNC_INTERVAL = 1.0


@dataclass
class HistoryState:
    """What the store hands the chat service at startup."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    markers: dict[str, dict[str, int]] = field(default_factory=dict)
    next_id: int = 1
    boot: int = 1
    #: Rooms by name: ``{"private": bool, "members": set of names}``.
    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Read markers in rooms: user -> room -> message id.
    room_markers: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Users whose room memberships the core has set up (a new user joins
    #: ``general`` once; one who left it later is not put back).
    enrolled: set[str] = field(default_factory=set)


def _snapshot_chunks(state: HistoryState) -> Iterator[str]:
    # One message per line: readable, diffable, and streamed rather than
    # built as one giant string.
    yield '{"version": %d, "next_id": %d, "boot": %d,\n' % (
        FORMAT_VERSION,
        state.next_id,
        state.boot,
    )
    rooms = {
        name: {"private": room["private"], "members": sorted(room["members"])}
        for name, room in sorted(state.rooms.items())
    }
    yield ' "rooms": %s,\n' % json.dumps(rooms, ensure_ascii=False)
    yield ' "room_markers": %s,\n' % json.dumps(state.room_markers, ensure_ascii=False)
    yield ' "enrolled": %s,\n' % json.dumps(sorted(state.enrolled), ensure_ascii=False)
    yield ' "read_markers": %s,\n "messages": [' % json.dumps(state.markers, ensure_ascii=False)
    sep = "\n  "
    for msg in state.messages:
        yield sep
        yield json.dumps(msg, ensure_ascii=False)
        sep = ",\n  "
    yield "\n ]}\n"


def apply_membership(state: HistoryState, rec: dict[str, Any]) -> None:
    """A ``member`` record: someone joined (with their read marker) or left a room."""
    name = intern(rec["room"])
    room = state.rooms.get(name)
    if room is None:
        return
    user = intern(rec["user"])
    state.enrolled.add(user)
    if rec["joined"]:
        room["members"].add(user)
        marks = state.room_markers.setdefault(user, {})
        marks[name] = max(marks.get(name, 0), rec.get("marker", 0))
    else:
        room["members"].discard(user)


def write_snapshot(path: Path, state: HistoryState) -> int:
    """Write ``state`` to ``path`` atomically; return its size in bytes."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        buf: list[str] = []
        for chunk in _snapshot_chunks(state):
            buf.append(chunk)
            if len(buf) >= 4096:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return size


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_message(m: Any) -> bool:
    """A direct message (``to``) or a room message (``room``)."""
    return (
        isinstance(m, dict)
        and _is_int(m.get("id"))
        and all(isinstance(m.get(k), str) for k in ("from", "text"))
        and isinstance(m.get("room") if "room" in m else m.get("to"), str)
    )


def _is_rooms(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(r, dict)
        and isinstance(r.get("private"), bool)
        and isinstance(r.get("members"), list)
        and all(isinstance(m, str) for m in r["members"])
        for r in v.values()
    )


def _is_markers(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(peers, dict) and all(_is_int(n) for n in peers.values()) for peers in v.values()
    )


def _is_record(rec: dict[str, Any]) -> bool:
    """A journal line the replay can apply (unknown ops are skipped, as before)."""
    op = rec.get("op")
    if op == "message":
        return _is_message(rec.get("message"))
    if op == "read":
        return (
            isinstance(rec.get("user"), str)
            and isinstance(rec.get("room") if "room" in rec else rec.get("with"), str)
            and _is_int(rec.get("up_to"))
        )
    if op == "room":
        return isinstance(rec.get("room"), str) and isinstance(rec.get("private"), bool)
    if op == "member":
        return (
            isinstance(rec.get("room"), str)
            and isinstance(rec.get("user"), str)
            and isinstance(rec.get("joined"), bool)
            and _is_int(rec.get("marker", 0))
        )
    if op == "boot":
        return _is_int(rec.get("boot"))
    return True


class HistoryStore:
    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: str = "everysec",
        min_compact_bytes: int = MIN_COMPACT_BYTES,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}")
        self.dir = Path(data_dir)
        self.snapshot_path = self.dir / HISTORY_FILE
        self.journal_path = self.dir / JOURNAL_FILE
        self.fsync_mode = fsync
        self.min_compact_bytes = min_compact_bytes
        self._fd: int | None = None
        self._size = 0  # bytes in the active journal
        self._snapshot_size = 0
        self._dirty = False
        self._fsync_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._child: tuple[int, list[Path]] | None = None
        self._next_segment = 0
        self._lock_fd: int | None = None

    # -- loading ------------------------------------------------------------
    def _segments(self) -> list[Path]:
        segs = []
        for p in self.dir.glob(JOURNAL_FILE + ".*"):
            suffix = p.name.rsplit(".", 1)[1]
            if suffix.isdigit():
                segs.append((int(suffix), p))
        return [p for _, p in sorted(segs)]

    def lock(self, *, moved_ok: bool = False) -> None:
        """Take the data directory; raise :class:`StoreError` if another process has it,
        or if its history has moved to PostgreSQL (unless ``moved_ok``: a core using it)."""
        if not moved_ok:
            self.check_not_moved()
        self.dir.mkdir(parents=True, exist_ok=True)
        # The directory itself is locked (flock on its descriptor): no lock file
        # to leave behind, and the lock dies with the process that holds it.
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"{self.dir} is in use by a running core; stop it first, or use a chat client"
            ) from None
        self._lock_fd = fd

    def moved(self) -> bool:
        """True if this directory's history is in PostgreSQL (see :meth:`mark_moved`)."""
        return (self.dir / MOVED_MARKER).exists()

    def check_not_moved(self) -> None:
        """Refuse a directory whose history is in PostgreSQL: its files are stale, and
        what was written to them would never be seen."""
        if self.moved():
            raise StoreError(
                f"the history of {self.dir} is in PostgreSQL ({self.dir / MOVED_MARKER}): "
                "run a core with --database-url (CHAT_DATABASE_URL) on it; a web app "
                "reaches that core with --core HOST:PORT"
            )

    def mark_moved(self, url: str) -> None:
        """Record that the history now lives in the database at ``url`` (password left out)."""
        parts = urlsplit(url)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        (self.dir / MOVED_MARKER).write_text(
            f"The history of this directory is kept in PostgreSQL ({where}); its history "
            "files are no longer used. Users and tokens still are.\n"
        )

    def peek(self) -> HistoryState:
        """Read snapshot + journal without writing anything (a running core may own them)."""
        self.check_not_moved()
        state = self._read_snapshot()
        last_id = state.messages[-1]["id"] if state.messages else 0
        for path in [*self._segments(), self.journal_path]:
            last_id = self._replay(path, state, last_id, active=False)
        return state

    def _read_snapshot(self) -> HistoryState:
        state = HistoryState()
        if self.snapshot_path.exists():
            raw = load_json_file(self.snapshot_path)
            self._check_snapshot(raw)
            state.messages = raw["messages"]
            state.markers = raw.get("read_markers", {})
            # Every membership names a user and a room: one shared string each, not
            # one per occurrence in the file (half the memory of a membership).
            state.rooms = {
                intern(name): {
                    "private": r["private"],
                    "members": {intern(m) for m in r["members"]},
                }
                for name, r in raw.get("rooms", {}).items()
            }
            state.room_markers = {
                intern(user): {intern(room): seq for room, seq in marks.items()}
                for user, marks in raw.get("room_markers", {}).items()
            }
            state.enrolled = set(raw.get("enrolled", []))
            state.next_id = int(raw.get("next_id", 1))
            state.boot = int(raw.get("boot", 0)) + 1  # replay may raise it further
            self._snapshot_size = self.snapshot_path.stat().st_size
        return state

    def load(self) -> HistoryState:
        """Take the directory, read snapshot + journal, open the journal for appending."""
        if self._lock_fd is None:
            self.lock()
        try:
            return self._load()
        except BaseException:
            self.close()  # refused: let go of the directory
            raise

    def _load(self) -> HistoryState:
        state = self._read_snapshot()
        last_id = state.messages[-1]["id"] if state.messages else 0
        segments = self._segments()
        self._next_segment = int(segments[-1].name.rsplit(".", 1)[1]) + 1 if segments else 1
        for path in [*segments, self.journal_path]:
            last_id = self._replay(path, state, last_id, active=path == self.journal_path)
        state.next_id = max(state.next_id, last_id + 1)
        self._open_journal()
        # Cursors embed the boot number so they never repeat across restarts;
        # record it now, since the snapshot is only rewritten at compaction.
        self._write_line({"op": "boot", "boot": state.boot})
        self.sync()
        return state

    def _check_snapshot(self, raw: Any) -> None:
        where = f"{self.snapshot_path}"
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("messages"), list)
            or not _is_markers(raw.get("read_markers", {}))
            or not _is_markers(raw.get("room_markers", {}))
            or not _is_rooms(raw.get("rooms", {}))
            or not isinstance(raw.get("enrolled", []), list)
            or not all(_is_int(raw.get(k, 1)) for k in ("next_id", "boot"))
        ):
            raise StoreError(
                f"{where} line 1: expected an object with a 'messages' list, 'read_markers' "
                "and integer 'next_id' and 'boot' — fix or restore the file; it was not modified"
            )
        prev = 0
        for i, m in enumerate(raw["messages"]):
            if not _is_message(m) or m["id"] <= prev:
                raise StoreError(
                    f"{where}: message #{i + 1} (line {self._message_line(i)}) is not a "
                    "message (from, to or room, "
                    "text) with an increasing integer id — fix or restore the file; it was "
                    "not modified"
                )
            prev = m["id"]

    def _message_line(self, i: int) -> int:
        """The line of message ``i`` in the snapshot as we write it (one message a line)."""
        lines = self.snapshot_path.read_text(encoding="utf-8", errors="replace").splitlines()
        start = next((n for n, text in enumerate(lines, 1) if '"messages"' in text), 0)
        return start + 1 + i

    def _replay(self, path: Path, state: HistoryState, last_id: int, *, active: bool) -> int:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return last_id
        if not data:  # emptied by a clean shutdown's compaction
            return last_id
        complete = data.endswith(b"\n")
        lines = data.split(b"\n")
        if complete:
            lines.pop()
        offset = 0
        for lineno, line in enumerate(lines, 1):
            last = lineno == len(lines)
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                if not _is_record(rec):
                    raise ValueError(f"not a valid {rec.get('op')!r} record")
            except ValueError as exc:
                if last:
                    log.warning(
                        "%s line %d: dropped a torn last record (%d bytes) left by a crash",
                        path,
                        lineno,
                        len(line),
                    )
                    if active:
                        with open(path, "r+b") as f:
                            f.truncate(offset)
                    break
                raise StoreError(
                    f"{path} line {lineno}: {exc} — fix or restore the file; it was not modified"
                ) from None
            offset += len(line) + 1
            if last and not complete and active:
                with open(path, "ab") as f:  # a whole record missing only its newline
                    f.write(b"\n")
            op = rec.get("op")
            if op == "message":
                msg = rec["message"]
                if msg["id"] > last_id:
                    state.messages.append(msg)
                    last_id = msg["id"]
            elif op == "read":
                table = state.room_markers if "room" in rec else state.markers
                key = rec["room"] if "room" in rec else rec["with"]
                marks = table.setdefault(rec["user"], {})
                marks[key] = max(marks.get(key, 0), rec["up_to"])
            elif op == "room":
                state.rooms.setdefault(rec["room"], {"private": rec["private"], "members": set()})
            elif op == "member":
                apply_membership(state, rec)
            elif op == "boot":
                state.boot = max(state.boot, rec["boot"] + 1)
        return last_id

    def _open_journal(self) -> None:
        self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    # -- appending ----------------------------------------------------------
    def append(self, record: dict[str, Any]) -> asyncio.Future[None] | None:
        """Write one record to the journal before the caller replies.

        Raises :class:`StorageUnavailable` if the disk refuses it (nothing is
        kept). In ``always`` mode returns a future that completes after the
        group ``fsync``; the caller replies when it is done.
        """
        self._write_line(record)
        if self.fsync_mode == "always":
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._commit_waiters.append(fut)
            if self._fsync_handle is None:
                self._fsync_handle = loop.call_soon(self._group_commit)
            return fut
        if self._fsync_handle is None:
            loop = asyncio.get_running_loop()
            self._fsync_handle = loop.call_later(FSYNC_INTERVAL, self._periodic_fsync)
        return None

    def _write_line(self, record: dict[str, Any]) -> None:
        line = dumps(record) + b"\n"
        if self._fd is None:
            raise StorageUnavailable("history journal is not open")
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "short write")
        except OSError as exc:
            # Cut off any partial line so the next record starts clean.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise StorageUnavailable(f"cannot write the history journal: {exc}") from None
        self._size += written
        self._dirty = True

    def _group_commit(self) -> None:
        self._fsync_handle = None
        waiters, self._commit_waiters = self._commit_waiters, []
        try:
            self.sync()
        except OSError as exc:
            err = StorageUnavailable(f"cannot fsync the history journal: {exc}")
            for w in waiters:
                if not w.done():
                    w.set_exception(err)
            return
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _periodic_fsync(self) -> None:
        self._fsync_handle = None
        try:
            self.sync()
        except OSError as exc:
            log.error("fsync of the history journal failed: %s", exc)

    def sync(self) -> None:
        if self._dirty and self._fd is not None:
            self._dirty = False
            os.fsync(self._fd)

    # -- compaction ---------------------------------------------------------
    def needs_compaction(self) -> bool:
        return self._child is None and self._size > max(self.min_compact_bytes, self._snapshot_size)

    def compact_in_background(self, snapshot: Callable[[], HistoryState]) -> bool:
        """Fork a child that writes the snapshot; False if one is running."""
        if self._child is not None or self._fd is None:
            return False
        if not hasattr(os, "fork"):
            self.compact_now(snapshot())
            return True
        self.sync()
        os.close(self._fd)
        self._fd = None
        seg = self.journal_path.with_name(f"{JOURNAL_FILE}.{self._next_segment}")
        self._next_segment += 1
        os.rename(self.journal_path, seg)
        self._open_journal()
        fsync_dir(self.dir)
        covered = self._segments()
        pid = os.fork()
        if pid == 0:  # child: write and leave without touching the parent's loop
            code = 1
            try:
                # Behind the core on a shared CPU: a compaction of millions of messages
                # takes seconds of CPU, which must not halve the chat's for that long.
                os.nice(COMPACTION_NICENESS)
                write_snapshot(self.snapshot_path, snapshot())
                code = 0
            except BaseException as exc:  # noqa: BLE001 - report, then _exit
                os.write(2, f"compaction failed: {exc}\n".encode())
            finally:
                os._exit(code)
        self._child = (pid, covered)
        log.info("compacting history in child process %d", pid)
        asyncio.get_running_loop().call_later(0.05, self._reap_child)
        return True

    def _reap_child(self) -> None:
        if self._child is None:
            return
        pid, covered = self._child
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 1
        if done == 0:
            asyncio.get_running_loop().call_later(0.05, self._reap_child)
            return
        self._child = None
        if os.waitstatus_to_exitcode(status) != 0:
            log.error("history compaction failed; journal segments kept, will retry")
            return
        for seg in covered:
            seg.unlink(missing_ok=True)
        self._snapshot_size = self.snapshot_path.stat().st_size
        log.info("history compacted (%d bytes)", self._snapshot_size)

    def compact_now(self, state: HistoryState) -> None:
        """Synchronous compaction (clean shutdown): snapshot, then empty journal."""
        if self._child is not None:
            pid, _ = self._child
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self._child = None
        self._snapshot_size = write_snapshot(self.snapshot_path, state)
        for seg in self._segments():
            seg.unlink(missing_ok=True)
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self._size = 0

    def close(self) -> None:
        if self._fsync_handle is not None:
            self._fsync_handle.cancel()
            self._fsync_handle = None
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
