"""Plain state the model holds: users, rooms and the open conversation (no IO, no Tk)."""

from __future__ import annotations

import dataclasses
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any


@dataclass
class User:
    username: str
    online: bool = False
    unread: int = 0


@dataclass
class Room:
    """A room as this user sees it (docs/protocol.md#rooms); ``members`` is the count."""

    name: str
    private: bool = False
    members: int = 0
    joined: bool = False
    unread: int = 0
    mentions: int = 0

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> Room:
        joined = bool(view.get("joined"))
        return cls(
            name=str(view["name"]),
            private=bool(view.get("private")),
            members=int(view.get("members", 0)),
            joined=joined,
            unread=int(view.get("unread", 0)) if joined else 0,
            mentions=int(view.get("mentions", 0)) if joined else 0,
        )


def room_key(name: str) -> str:
    """The key of a room's draft (user names never start with ``#``)."""
    return f"#{name}"


@dataclass
class Conversation:
    """The messages of one peer (or one room) shown so far, oldest first, unique by id."""

    peer: str  # the other user's name, or the room's name when ``is_room``
    is_room: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    has_more: bool = False  # older messages exist on the server
    loading: bool = False  # a history request is in flight
    _ids: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Drafts are kept under this: the peer's name, or ``#room``."""
        return room_key(self.peer) if self.is_room else self.peer

    def holds(self, msg: dict[str, Any], me: str | None) -> bool:
        """True if ``msg`` (a message or an unconfirmed one) belongs to this conversation."""
        if self.is_room:
            return msg.get("room") == self.peer
        if "room" in msg:
            return False
        return self.peer in (msg.get("to"), msg.get("from")) and me in (
            msg.get("to"),
            msg.get("from"),
        )

    @property
    def oldest_id(self) -> int | None:
        return self._ids[0] if self._ids else None

    @property
    def newest(self) -> dict[str, Any] | None:
        return self.messages[-1] if self.messages else None

    def add(self, msgs: list[dict[str, Any]]) -> bool:
        """Merge ``msgs`` in id order, skipping ones already held; True if any was new.

        Messages arrive from history pages, poll events and send replies, often
        the same one twice, so merging by id is what keeps the view free of
        doubles. Appends (the usual case) cost O(1) per message.
        """
        added = False
        for m in msgs:
            mid = m["id"]
            if not self._ids or mid > self._ids[-1]:
                self._ids.append(mid)
                self.messages.append(m)
                added = True
                continue
            pos = bisect_left(self._ids, mid)
            if self._ids[pos] != mid:
                self._ids.insert(pos, mid)
                self.messages.insert(pos, m)
                added = True
        return added


def snapshot(client: Any) -> dict[str, Any]:
    """A ChatClient's state as plain JSON data (the CHAT_DESKTOP_STATE_FILE test hook)."""
    return {
        "phase": client.phase,
        "error": client.error,
        "username": client.username,
        "users": [vars(u) for u in client.sorted_users()],
        "rooms": [vars(r) for r in client.sorted_rooms()],
        "total_unread": client.total_unread,
        "total_mentions": client.total_mentions,
        "peer": client.peer,
        "room": client.room,
        "room_members": client.member_list(client.room) if client.room else None,
        "messages": [
            {
                **{k: m.get(k) for k in ("id", "from", "to", "text", "pending")},
                **({"room": m["room"], "mention": client.mentions_me(m)} if "room" in m else {}),
            }
            for m in client.visible_messages()
        ],
        "has_more": client.has_more,
        "loading": bool(client.conv and client.conv.loading),
        "pending": client.pending_count,
        "drafts": dict(client.drafts),
        "reconnect_attempts": client.reconnect_attempts,
        "plan": client.plan,
        "security": _plain(client.security),
        "trust_question": _plain(client.trust_question),
        "refusal": _plain(client.refusal),
    }


def _plain(item: Any) -> dict[str, Any] | None:
    return dataclasses.asdict(item) if item is not None else None
