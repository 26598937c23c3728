"""Rooms: group conversations (docs/protocol.md#rooms), a mixin of ``ChatService``.

A room keeps its messages in one :class:`ConversationIndex` (ids, messages,
and each sender's ids), so unread counts are two binary searches; mentions
are indexed per mentioned user when a message is stored, so their counts are
one more. Membership and read markers are durable like messages: each change
is one journal record (``room``, ``member``, ``read`` with ``room``) written
before the reply.

Fan-out: a room message is one event object with its JSON encoding made once
(:class:`~legacy_socket_server.protocol.PreEncoded`) and one sequence number;
each member's log gets an append of that same entry, and each member's held
polls are woken once. Nothing is copied or encoded per member: poll replies
splice the event's bytes (docs/architecture.md#rooms).
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import Any

from mypy_extensions import trait

from .conversations import ConversationIndex
from .session import ChatError, Session
from .storage_files import StorageUnavailable
from .store import HistoryState
from .validation import BadRequest, get_bool, get_str

log = logging.getLogger(__name__)

#: docs/protocol.md#rooms: 1-40 of a-z 0-9 - _, starting with a letter or digit.
ROOM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
#: Every user is a member of this public room until they leave it.
DEFAULT_ROOM = "general"
#: ``create_room`` may name at most this many members to add at once.
MAX_CREATE_MEMBERS = 1000
#: A mention is ``@`` and a user name; the names' own characters.
_MENTION_RE = re.compile(r"@([A-Za-z0-9_.\-]{1,32})")


def room_name(value: Any) -> str:
    """A request's room name, lowercased; ``invalid_name`` if it breaks the rules."""
    if not isinstance(value, str):
        raise BadRequest("field 'room' must be a string")
    name = value.lower()
    if not ROOM_NAME_RE.fullmatch(name):
        raise ChatError(
            "invalid_name",
            "room names are 1-40 characters: a-z, 0-9, '-' and '_', "
            "starting with a letter or digit",
        )
    return name


def mentioned(text: str, lookup: Callable[[str], str | None]) -> set[str]:
    """The users ``@name`` mentions in ``text`` (case-insensitive).

    ``@name`` counts where the name ends the text or is followed by anything
    but a letter, digit, ``_`` or ``-``: "@bob." and "@Bob!" mention bob,
    "@bobby" and "@bob_x" do not. ``lookup`` maps a lowercased name to the
    user's name, or None.
    """
    found: set[str] = set()
    if "@" not in text:  # most messages: skip the regex (a large share of a room-heavy start)
        return found
    for m in _MENTION_RE.finditer(text):
        run, end = m.group(1), m.end(1)
        # Names may contain '.', which is not a word character here: try the
        # whole run and every prefix that stops before a '.'.
        for k in range(len(run), 0, -1):
            nxt = run[k] if k < len(run) else (text[end] if end < len(text) else "")
            if nxt and (nxt.isalnum() or nxt in "_-"):
                continue
            name = lookup(run[:k].lower())
            if name is not None:
                found.add(name)
    return found


class Room:
    """One room: who is in it, its messages, and who is mentioned where."""

    __slots__ = ("name", "private", "members", "index", "mentions")

    def __init__(self, name: str, private: bool, members: Iterable[str] = ()) -> None:
        self.name = name
        self.private = private
        # Copied even from a set: a copy is sized to fit, a set that grew by adds is not.
        self.members: set[str] = set(members)
        self.index = ConversationIndex()
        #: user -> ids of messages by others that mention them
        self.mentions: dict[str, list[int]] = {}

    @property
    def newest(self) -> int:
        return self.index.ids[-1] if self.index.ids else 0

    def unread(self, user: str, marker: int) -> tuple[int, int]:
        """Messages from others after ``marker``, and how many of them mention ``user``."""
        ids = self.index.ids
        total = len(ids) - bisect_right(ids, marker)
        own = self.index.sent.get(user)
        if own:
            total -= len(own) - bisect_right(own, marker)
        hits = self.mentions.get(user)
        return total, (len(hits) - bisect_right(hits, marker)) if hits else 0


@trait
class RoomRules:
    """The room purposes and the room side of messages, history and read markers."""

    # Provided by ChatService.
    users: Any
    history: Any
    _rooms: dict[str, Room]
    _creating: set[str]
    _room_markers: dict[str, dict[str, int]]
    _enrolled: set[str]
    _online: dict[str, set[Session]]

    def _emit(self, user: str, event: dict[str, Any], skip: int = 0) -> None:
        raise NotImplementedError

    def _emit_many(self, users: Any, event: dict[str, Any], skip: int = 0) -> None:
        raise NotImplementedError

    def _maybe_compact(self) -> None:
        raise NotImplementedError

    def _commit_then(
        self, commit: Any, base: dict[str, Any], apply: Callable[[], dict[str, Any]]
    ) -> Any:
        raise NotImplementedError

    commit_first: bool

    def cursor(self) -> int:
        raise NotImplementedError

    def is_online(self, name: str) -> bool:
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------
    def _load_rooms(self, state: HistoryState) -> None:
        self._rooms = {
            name: Room(name, r["private"], r["members"]) for name, r in state.rooms.items()
        }
        self._room_markers = state.room_markers
        self._enrolled = state.enrolled
        #: Rooms whose creation is being committed (a commit-first store).
        self._creating: set[str] = set()

    def _room_state(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
        rooms = {n: {"private": r.private, "members": r.members} for n, r in self._rooms.items()}
        return rooms, self._room_markers

    def _index_room_message(self, msg: dict[str, Any]) -> None:
        room = self._rooms.get(msg["room"])
        if room is None:  # a record of a room whose creation was lost: keep the message
            room = self._rooms[msg["room"]] = Room(msg["room"], True)
        room.index.add(msg)
        for name in mentioned(msg["text"], self.users.by_lower):
            if name != msg["from"]:
                room.mentions.setdefault(name, []).append(msg["id"])

    def _write(self, record: dict[str, Any], what: str = "that") -> Any:
        """Journal ``record``; ``storage_unavailable`` if the disk refuses it."""
        try:
            return self.history.append(record)
        except StorageUnavailable as exc:
            log.error("%s refused: %s", record.get("op"), exc)
            raise ChatError("storage_unavailable", f"the server cannot save {what} right now")

    def enroll_users(self) -> None:
        """New users join ``general``; users no longer registered leave every room.

        Called at startup and whenever the users file changes. Each change is
        journaled like any other membership change.
        """
        names = set(self.users.names())
        if DEFAULT_ROOM not in self._rooms:
            self._write({"op": "room", "room": DEFAULT_ROOM, "private": False})
            self._rooms[DEFAULT_ROOM] = Room(DEFAULT_ROOM, False)
            log.info("created the room %r for every user", DEFAULT_ROOM)
        for name in sorted(names - self._enrolled):
            self._set_member(self._rooms[DEFAULT_ROOM], name, True)
        for room in self._rooms.values():
            for gone in sorted(room.members - names):
                self._set_member(room, gone, False)

    def _set_member(self, room: Room, user: str, joined: bool) -> Any:
        """Journal and apply a membership change now; tell the room and the user.

        The core's own changes (enrolment) and the rooms CLI: nobody waits for a reply,
        so it is applied at once with any store; a commit that fails is logged and the
        user is enrolled again at the next start.
        """
        record = self._member_record(room, user, joined)
        commit = self._write(record)
        self._apply_member(room, user, joined, record.get("marker", 0))
        self._maybe_compact()
        if commit is not None and self.commit_first:

            def check(f: Any) -> None:
                if f.exception() is not None:
                    log.error("%s in %r: not stored: %s", user, room.name, f.exception())

            commit.add_done_callback(check)
        return commit

    @staticmethod
    def _member_record(room: Room, user: str, joined: bool) -> dict[str, Any]:
        record: dict[str, Any] = {"op": "member", "room": room.name, "user": user, "joined": joined}
        if joined:
            record["marker"] = room.newest
        return record

    def _apply_member(self, room: Room, user: str, joined: bool, marker: int = 0) -> None:
        """Apply a membership change (``marker``: the joiner's read marker, as journaled);
        the caller checks for a compaction once the whole change is applied."""
        self._enrolled.add(user)
        if joined:
            room.members.add(user)
            marks = self._room_markers.setdefault(user, {})
            marks[room.name] = max(marks.get(room.name, 0), marker)
        else:
            room.members.discard(user)
        tell = set(room.members) | {user}
        self._emit_many(
            tell, {"type": "member", "room": room.name, "username": user, "joined": joined}
        )
        self._emit(user, {"type": "room", "room": self.room_view(user, room)})

    def _change_member(
        self, room: Room, user: str, joined: bool, base: dict[str, Any], reply: Callable[[], dict]
    ) -> Any:
        """A member's request: journal the change, apply it (after the commit with a
        commit-first store) and answer with ``reply()``."""
        record = self._member_record(room, user, joined)
        commit = self._write(record)

        def apply() -> dict[str, Any]:
            if (user in room.members) != joined:
                self._apply_member(room, user, joined, record.get("marker", 0))
                self._maybe_compact()
            elif joined:  # a join in flight did it; the database took the larger marker
                marks = self._room_markers.setdefault(user, {})
                marks[room.name] = max(marks.get(room.name, 0), record.get("marker", 0))
            return reply()

        return self._commit_then(commit, base, apply)

    # -- views -------------------------------------------------------------------------
    def visible(self, user: str, room: Room) -> bool:
        return not room.private or user in room.members

    def room_view(self, user: str, room: Room) -> dict[str, Any]:
        joined = user in room.members
        unread = mentions = 0
        if joined:
            unread, mentions = room.unread(user, self._room_markers.get(user, {}).get(room.name, 0))
        return {
            "name": room.name,
            "private": room.private,
            "members": len(room.members),
            "joined": joined,
            "unread": unread,
            "mentions": mentions,
        }

    def room_list(self, user: str) -> list[dict[str, Any]]:
        return [
            self.room_view(user, room)
            for name, room in sorted(self._rooms.items())
            if self.visible(user, room)
        ]

    def _room(self, session: Session, req: dict[str, Any], *, member: bool = True) -> Room:
        """The room a request names, as its asker may see it."""
        name = room_name(req.get("room"))
        room = self._rooms.get(name)
        user: str = session.username  # type: ignore[assignment]
        if room is None or not self.visible(user, room):
            raise ChatError("unknown_room", f"no room named {name!r}")
        if member and user not in room.members:
            raise ChatError("not_a_member", f"you are not a member of {name!r}; join it first")
        return room

    # -- purposes ------------------------------------------------------------------------
    def _rooms_purpose(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        self.users.refresh()
        return {"rooms": self.room_list(session.username), "cursor": self.cursor()}  # type: ignore[arg-type]

    def _create_room(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        user: str = session.username  # type: ignore[assignment]
        if "room" not in req:
            raise BadRequest("missing field 'room'")
        name = room_name(req["room"])
        private = get_bool(req, "private", required=False) or False
        members = req.get("members", [])
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise BadRequest("field 'members' must be a list of user names")
        if len(members) > MAX_CREATE_MEMBERS:
            raise BadRequest(f"at most {MAX_CREATE_MEMBERS} members at once")
        if name in self._rooms or name in self._creating:
            raise ChatError("room_exists", f"a room named {name!r} exists already")
        self.users.refresh()
        for m in members:
            if not self.users.exists(m):
                raise ChatError("unknown_user", f"no user named {m!r}")
        self._take_send_token(user)
        room = Room(name, private)
        created = {"op": "room", "room": name, "private": private}
        commit = self._write(created)
        joining = sorted({user, *members})
        for m in joining:
            # Written together, so committed together (one transaction, or one journal);
            # "new": the database drops them with the room if another core took the name.
            commit = self._write({**self._member_record(room, m, True), "new": True}) or commit
        # A compaction may only start once all of it is applied (below): its snapshot
        # replaces the journal holding these records.

        def apply() -> dict[str, Any]:
            self._creating.discard(name)
            if created.get("conflict"):  # created on another core meanwhile
                raise ChatError("room_exists", f"a room named {name!r} exists already")
            self._rooms[name] = room
            log.info("%s created the %s room %r", user, "private" if private else "public", name)
            for m in joining:
                self._apply_member(room, m, True)  # a new room: every marker is 0
            if not private:
                # Everyone can see a new public room: tell those who are not in it.
                outsiders = [n for n in self.users.names() if n not in room.members]
                for n in outsiders:
                    self._emit(n, {"type": "room", "room": self.room_view(n, room)})
            self._maybe_compact()
            return {"room": self.room_view(user, room)}

        if commit is not None and self.commit_first:
            self._creating.add(name)  # taken while it commits
            commit.add_done_callback(lambda _: self._creating.discard(name))
        return self._commit_then(commit, base, apply)

    def _join_room(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        user: str = session.username  # type: ignore[assignment]
        room = self._room(session, req, member=False)
        view = lambda: {"room": self.room_view(user, room)}  # noqa: E731
        if user in room.members:
            return view()
        return self._change_member(room, user, True, base, view)

    def _leave_room(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        room = self._room(session, req)
        return self._change_member(room, session.username, False, base, dict)  # type: ignore[arg-type]

    def _add_member(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        room = self._room(session, req)
        other = get_str(req, "username", max_len=64)
        if not self.users.exists(other) and not (self.users.refresh() and self.users.exists(other)):
            raise ChatError("unknown_user", f"no user named {other!r}")
        if other in room.members:
            return {}
        return self._change_member(room, other, True, base, dict)

    def _room_members(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        room = self._room(session, req)
        return {
            "members": [{"username": n, "online": self.is_online(n)} for n in sorted(room.members)]
        }

    def _take_send_token(self, user: str) -> None:
        raise NotImplementedError
