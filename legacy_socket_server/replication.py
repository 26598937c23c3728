"""Other cores' changes, applied here: a mixin of ``ChatService`` (docs/scaling.md).

With several cores on one PostgreSQL database, each keeps the whole chat state in
memory as a single core does, and applies the changes of the others as the feed
(pg_feed.py) hands them on, in commit order: the same records the journal holds,
after ``chat_apply`` decided what only the database can (ids, duplicates, conflicts).
Applying one tells this core's sessions exactly what the core that made the change
told its own: a message event to the members here, a read event to the reader's
other sessions, the room and member events.

Presence across cores: a user is online while any session on any core is logged in.
Each core writes a ``presence`` record when a user's first session here starts and
when their last one here ends; the others keep, per user, the set of other cores
they are on (:attr:`RemoteChanges._remote_online`). A core that dies is dropped by
another's heartbeat (``core_gone``), and its users leave those sets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mypy_extensions import trait

from .rooms import Room
from .session import Session
from .storage_files import StorageUnavailable
from .storage_pg import message_from

log = logging.getLogger(__name__)

#: Seconds before a failed presence write is repaired by writing the whole set again.
PRESENCE_RETRY = 1.0


@trait
class RemoteChanges:
    """Applying other cores' records; presence shared between cores."""

    # Provided by ChatService.
    users: Any
    tokens: Any
    history: Any
    closing: bool
    _online: dict[str, set[Session]]
    _rooms: dict[str, Room]
    _markers: dict[str, dict[str, int]]
    _room_markers: dict[str, dict[str, int]]
    _enrolled: set[str]

    def _add_message(self, msg: dict[str, Any], skip: int = 0) -> None:
        raise NotImplementedError

    def _emit(self, user: str, event: dict[str, Any], skip: int = 0) -> None:
        raise NotImplementedError

    def _apply_member(self, room: Room, user: str, joined: bool, marker: int = 0) -> None:
        raise NotImplementedError

    def _broadcast_presence(self, name: str, online: bool) -> None:
        raise NotImplementedError

    def room_view(self, user: str, room: Room) -> dict[str, Any]:
        raise NotImplementedError

    #: user -> the other cores they are logged in on (empty with one core).
    _remote_online: dict[str, set[int]]
    #: Does the store share this core's presence with others (PostgreSQL)?
    _shares_presence: bool
    _core_id: int
    _presence_repair: asyncio.TimerHandle | None

    def loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError

    def _init_remote(self, history: Any) -> None:
        accounts = getattr(history, "accounts", None)
        self._remote_online = accounts.presence if accounts is not None else {}
        self._core_id: int = getattr(history, "core_id", 0)
        self._shares_presence = bool(self._core_id)
        self._presence_repair: asyncio.TimerHandle | None = None

    def is_online(self, name: str) -> bool:
        return bool(self._online.get(name)) or name in self._remote_online

    # -- this core's presence, for the others ------------------------------------------
    def _share_presence(self, name: str, online: bool) -> None:
        if not self._shares_presence or self.closing:
            return  # at shutdown the store leaves ``cores``: everyone here goes at once
        self._write_presence({"op": "presence", "user": name, "online": online})

    def _write_presence(self, record: dict[str, Any]) -> None:
        """Write a presence record; if it fails, the whole set is written again until it
        is stored (a lost "offline" would show a ghost on every other core for ever)."""
        try:
            pending = self.history.append(record)
        except StorageUnavailable as exc:
            self._presence_failed(exc)
            return

        def check(f: Any) -> None:
            if not f.cancelled() and f.exception() is not None:
                self._presence_failed(f.exception())

        pending.add_done_callback(check)

    def _presence_failed(self, exc: BaseException) -> None:
        if self._presence_repair is not None or self.closing:
            return
        log.error("presence not shared (%s): writing the whole set again shortly", exc)
        self._presence_repair = self.loop().call_later(PRESENCE_RETRY, self.announce_presence)

    def announce_presence(self) -> None:
        """Say again who is logged in here, all at once, replacing what the database has:
        after a failed presence write, or when this core was dropped while cut off."""
        self._presence_repair = None
        if self._shares_presence and not self.closing:
            self._write_presence({"op": "presence_set", "users": sorted(self._online)})

    # -- other cores' changes ----------------------------------------------------------
    def apply_remote(self, records: list[dict[str, Any]]) -> None:
        """One change (a transaction's records) committed by another core."""
        for record in records:
            if record.get("conflict"):
                continue  # refused by the database: nothing happened
            handler = _HANDLERS.get(record.get("op"))  # type: ignore[arg-type]
            if handler is None:
                continue
            try:
                handler(self, record)
            except Exception:  # one bad record must not stop the ones after it
                log.exception("applying another core's %r failed", record.get("op"))

    def _remote_message(self, record: dict[str, Any]) -> None:
        self._add_message(message_from(record["message"]))

    def _remote_read(self, record: dict[str, Any]) -> None:
        user = record["user"]
        if "room" in record:
            key, table, field = record["room"], self._room_markers, "room"
        else:
            key, table, field = record["with"], self._markers, "with"
        marks = table.setdefault(user, {})
        if record["up_to"] > marks.get(key, 0):
            marks[key] = record["up_to"]
            self._emit(user, {"type": "read", field: key, "up_to": record["up_to"]})

    def _remote_room(self, record: dict[str, Any]) -> None:
        name = record["room"]
        if name in self._rooms:
            return
        room = self._rooms[name] = Room(name, bool(record["private"]))
        if not room.private:
            for n in self.users.names():
                self._emit(n, {"type": "room", "room": self.room_view(n, room)})

    def _remote_member(self, record: dict[str, Any]) -> None:
        room = self._rooms.get(record["room"])
        if room is None:
            return
        user, joined, marker = record["user"], bool(record["joined"]), record.get("marker", 0)
        if (user in room.members) != joined:
            self._apply_member(room, user, joined, marker)
        else:
            self._enrolled.add(user)
            if joined:
                marks = self._room_markers.setdefault(user, {})
                marks[room.name] = max(marks.get(room.name, 0), marker)

    def _remote_presence(self, record: dict[str, Any]) -> None:
        name, core = record["user"], record["core"]
        if core == self._core_id:
            return  # our own (a commit reported failed that went through): _online says
        cores = self._remote_online.get(name)
        if record["online"]:
            if cores is None:
                self._remote_online[name] = {core}
                if not self._online.get(name):
                    self._broadcast_presence(name, True)
            else:
                cores.add(core)
        elif cores is not None:
            cores.discard(core)
            if not cores:
                del self._remote_online[name]
                if not self._online.get(name):
                    self._broadcast_presence(name, False)

    def _remote_presence_set(self, record: dict[str, Any]) -> None:
        core, now = record["core"], set(record["users"])
        if core == self._core_id:
            return
        for name in [n for n, cores in self._remote_online.items() if core in cores]:
            if name not in now:
                self._remote_presence({"user": name, "core": core, "online": False})
        for name in sorted(now):
            self._remote_presence({"user": name, "core": core, "online": True})

    def _remote_core_gone(self, record: dict[str, Any]) -> None:
        core = record["core"]
        for name in [n for n, cores in self._remote_online.items() if core in cores]:
            self._remote_presence({"user": name, "core": core, "online": False})

    def _remote_token(self, record: dict[str, Any]) -> None:
        self.tokens.apply(record)

    def _remote_user(self, record: dict[str, Any]) -> None:
        self.users.apply(record)


_HANDLERS: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "message": RemoteChanges._remote_message,
    "read": RemoteChanges._remote_read,
    "room": RemoteChanges._remote_room,
    "member": RemoteChanges._remote_member,
    "presence": RemoteChanges._remote_presence,
    "presence_set": RemoteChanges._remote_presence_set,
    "core_gone": RemoteChanges._remote_core_gone,
    "token": RemoteChanges._remote_token,
    "token_used": RemoteChanges._remote_token,
    "untoken": RemoteChanges._remote_token,
    "user": RemoteChanges._remote_user,
}
