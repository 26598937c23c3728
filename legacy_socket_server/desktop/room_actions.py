"""The desktop client's rooms: the list, the members, the room actions and their replies.

:class:`RoomActions` is the rooms part of :class:`~.model.ChatClient`, which
inherits it; the state it reads and changes (``rooms``, ``members``) and the
requests it sends live on the client. Like the model, it never imports Tk and
never blocks: an action queues its request and returns, and the core's answer
comes to ``done(ok, message)`` at a later tick.

A ``room`` event carries the core's view of one room at that point of the
stream and replaces ours; ``member`` events keep a listed room's members up to
date between ``room_members`` replies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..rooms import ROOM_NAME_RE
from .conversation import Conversation, Room, room_key
from .phases import READY
from .transport import Connection

#: ``done(ok, message)``: how a room action ended (message: the core's sentence).
Done = Callable[[bool, str | None], None]

NOT_CONNECTED = "Not connected to the server right now; try again when it is back."


def normalise_room_name(name: str) -> str | None:
    """``name`` as the core will store it (lowercased), or None if the core would refuse it."""
    name = name.strip().lower()
    return name if ROOM_NAME_RE.fullmatch(name) else None


class RoomActions:
    """The rooms part of :class:`~.model.ChatClient`, which inherits it.

    Everything declared before the first section below is provided by
    ChatClient (model.py): the state, the connection, and the request and
    redraw machinery. It is declared here so this class reads, and
    type-checks, as a contract: nothing else of ChatClient is used, and the
    mixin keeps no state of its own.
    """

    username: str | None
    phase: str
    error: str | None
    rooms: dict[str, Room]
    members: dict[str, list[str]]
    drafts: dict[str, str]
    conv: Conversation | None
    _conn: Connection | None
    _outbox: dict[str, dict[str, Any]]
    _changed: Callable[..., None]
    _want: Callable[..., None]
    _request: Callable[..., None]
    _online: Callable[[str], bool]
    _mark_read: Callable[[], None]
    _add_messages: Callable[[list[dict[str, Any]]], None]
    mentions_me: Callable[[dict[str, Any]], bool]

    # A read-only property in ChatClient, which a plain annotation would call
    # writable (mypy refuses that override); ChatClient's own replaces this one.
    @property
    def room(self) -> str | None:
        raise NotImplementedError

    # -- what the view reads ----------------------------------------------------------
    def sorted_rooms(self) -> list[Room]:
        """Joined rooms first, then by name."""
        return sorted(self.rooms.values(), key=lambda r: (not r.joined, r.name))

    def public_rooms_to_join(self) -> list[Room]:
        return [r for r in self.sorted_rooms() if not r.joined and not r.private]

    @property
    def total_mentions(self) -> int:
        return sum(r.mentions for r in self.rooms.values() if r.joined)

    def member_list(self, room: str | None) -> list[dict[str, Any]] | None:
        """The room's members as last listed, each with a live online flag; None if unknown."""
        names = self.members.get(room or "")
        if names is None:
            return None
        return [
            {"username": n, "online": n == self.username or self._online(n)}
            for n in sorted(names, key=str.casefold)
        ]

    # -- actions from the view --------------------------------------------------------
    # Room actions. Each returns a sentence for a person if it cannot even be
    # asked (not connected, a name the core would refuse), else None; the core's
    # answer comes later to ``done(ok, message)`` (and, without ``done``, a
    # refusal shows as ``error``).
    def create_room(
        self,
        name: str,
        private: bool = False,
        members: Iterable[str] = (),
        done: Done | None = None,
    ) -> str | None:
        room = normalise_room_name(name)
        if room is None:
            return (
                "Room names are 1-40 characters: a-z, 0-9, '-' and '_', "
                "starting with a letter or digit."
            )
        fields: dict[str, Any] = {"room": room, "private": bool(private)}
        others = sorted({m for m in members if m and m != self.username})
        if others:
            fields["members"] = others
        return self._room_request("create_room", fields, done, name=room)

    def join_room(self, name: str, done: Done | None = None) -> str | None:
        return self._room_request("join_room", {"room": name}, done, name=name)

    def leave_room(self, name: str, done: Done | None = None) -> str | None:
        return self._room_request("leave_room", {"room": name}, done, name=name)

    def add_member(self, room: str, username: str, done: Done | None = None) -> str | None:
        username = username.strip()
        if not username:
            return "Type the name of the person to add."
        fields = {"room": room, "username": username}
        return self._room_request("add_member", fields, done, name=room)

    def load_members(self, room: str, done: Done | None = None) -> str | None:
        """Ask for the room's member list (then ``member_list(room)``)."""
        return self._room_request("room_members", {"room": room}, done, name=room)

    def refresh_rooms(self) -> None:
        """Ask the core for the room list again (counts of rooms we are not in go stale:
        nobody tells us when someone joins those)."""
        if self.phase == READY:
            self._want("rooms")

    def _room_request(
        self, purpose: str, fields: dict[str, Any], done: Done | None, **context: Any
    ) -> str | None:
        if self.phase != READY or self._conn is None:
            return NOT_CONNECTED
        self._request(purpose, fields, done=done, **context)
        self._conn.flush()
        return None

    # -- the core's view of rooms -----------------------------------------------------
    def _set_rooms(self, rooms: list[dict[str, Any]]) -> None:
        self.rooms = {}
        for view in rooms:
            room = Room.from_view(view)
            self.rooms[room.name] = room
        for name in list(self.members):
            if name not in self.rooms or not self.rooms[name].joined:
                del self.members[name]
        self._check_open_room()
        self._mark_read()
        self._changed("rooms")

    def _apply_room_view(self, view: dict[str, Any]) -> None:
        """A ``room`` event: the core's view of one room at this point of the stream."""
        room = Room.from_view(view)
        if room.private and not room.joined:
            self.rooms.pop(room.name, None)  # no longer visible to us
        else:
            self.rooms[room.name] = room
        if not room.joined:
            self.members.pop(room.name, None)
        self._check_open_room()
        if room.name == self.room:
            self._mark_read()
        self._changed("rooms", "members")

    def _check_open_room(self) -> None:
        """Close the open room if we are no longer in it (left in another session)."""
        name = self.room
        if name is not None and not (name in self.rooms and self.rooms[name].joined):
            self.conv = None
            self._changed("conversation")

    def _on_member_event(self, event: dict[str, Any]) -> None:
        name, who, joined = event["room"], event["username"], bool(event["joined"])
        if who == self.username:
            return  # our own membership: the ``room`` event that follows says it all
        room = self.rooms.get(name)
        if room is not None:
            room.members = max(0, room.members + (1 if joined else -1))
        listed = self.members.get(name)
        if listed is not None:
            if joined and who not in listed:
                listed.append(who)
            elif not joined and who in listed:
                listed.remove(who)
        self._changed("rooms", "members")

    def _on_room_message(self, msg: dict[str, Any]) -> None:
        name = msg["room"]
        mine = msg["from"] == self.username
        if mine and msg.get("client_msg_id") in self._outbox:
            del self._outbox[msg["client_msg_id"]]
            self._changed("conversation")
        room = self.rooms.get(name)
        if room is None:
            self._want("rooms")  # a room we have not heard of yet
        if name == self.room:
            self._add_messages([msg])
            if not mine:
                self._mark_read()
        elif not mine and room is not None and room.joined:
            room.unread += 1
            if self.mentions_me(msg):
                room.mentions += 1
                self._changed("bell")  # a room rings only when it calls you
            self._changed("rooms")

    # -- room replies -------------------------------------------------------------------
    def _finish(self, reply: dict[str, Any], done: Done | None) -> bool:
        ok = bool(reply.get("ok"))
        message = None if ok else (reply.get("message") or "The server refused that.")
        if not ok and done is None:
            self.error = message
            self._changed("status")
        if done is not None:
            done(ok, message)
        return ok

    def _learn_room(self, reply: dict[str, Any]) -> None:
        # The ``room`` event says the same at its place in the stream and wins:
        # this reply's view is only used if the event has not come yet.
        view = reply.get("room")
        if isinstance(view, dict) and not (
            view["name"] in self.rooms and self.rooms[view["name"]].joined
        ):
            self.rooms[view["name"]] = Room.from_view(view)
            self._changed("rooms")

    def _on_create_room(self, reply: dict[str, Any], done: Done | None, name: str) -> None:
        if reply.get("ok"):
            self._learn_room(reply)
        self._finish(reply, done)

    def _on_join_room(self, reply: dict[str, Any], done: Done | None, name: str) -> None:
        if reply.get("ok"):
            self._learn_room(reply)
        self._finish(reply, done)

    def _on_leave_room(self, reply: dict[str, Any], done: Done | None, name: str) -> None:
        if reply.get("ok"):
            room = self.rooms.get(name)
            if room is not None and room.joined:
                room.joined = False
                room.unread = room.mentions = 0
                room.members = max(0, room.members - 1)
                if room.private:
                    del self.rooms[name]
            self.members.pop(name, None)
            self.drafts.pop(room_key(name), None)
            self._check_open_room()
            self._changed("rooms", "members")
        self._finish(reply, done)

    def _on_add_member(self, reply: dict[str, Any], done: Done | None, name: str) -> None:
        self._finish(reply, done)

    def _on_room_members(self, reply: dict[str, Any], done: Done | None, name: str) -> None:
        if reply.get("ok"):
            self.members[name] = [m["username"] for m in reply["members"]]
            self._changed("members")
        self._finish(reply, done)
