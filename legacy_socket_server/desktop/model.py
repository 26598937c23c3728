"""The desktop client's model: connection, login, users, rooms, the open conversation.

``ChatClient`` owns a non-blocking :class:`~.transport.Connection` and all the
state the window shows; it never imports Tk (docs/architecture.md#desktop-client). The
window calls :meth:`ChatClient.tick` every 100 ms; each tick moves bytes,
applies replies and events, and returns the names of what changed so the view
redraws only that. Nothing blocks and nothing runs on a thread.

Every connection (the login's, and each reconnect's) is opened by a
:class:`~.dialer.Dialer`, which checks the server's TLS certificate first; the
login or resume request is only queued on a connection it has trusted. A
server the system does not trust and we have not met becomes
``trust_question`` until the person answers with :meth:`ChatClient.answer_trust`.

The rooms part (the room list and members, the room actions and their
replies, room messages and events) is :class:`~.room_actions.RoomActions`,
which ``ChatClient`` inherits; the phases are in :mod:`.phases`.

Counts (unread per person and per room, mentions per room) start from a list
the core sends with a cursor (the login reply, or a ``users``/``rooms`` reply)
and then follow the events after that cursor. A ``room`` event carries the
core's view of one room at that point of the stream and replaces ours.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..contract import MAX_TEXT_CHARS, iso_timestamp
from ..rooms import mentioned
from .conversation import Conversation, Room, User, room_key
from .dialer import Dialer
from .phases import CLOSED, LOGGED_OUT, LOGGING_IN, READY, RECONNECTING, UNREACHABLE
from .room_actions import RoomActions
from .room_actions import normalise_room_name as normalise_room_name  # for sheets.py, tests
from .transport import CONNECT_TIMEOUT, Connection
from .trust import KnownHosts, Refusal, Security, TLSOptions, TrustQuestion, plan, refused_by_user

log = logging.getLogger(__name__)

#: A poll held by the server this long ends with no events; we at once poll
#: again. Long-polling gets events to the window within one tick of their
#: arrival at the server without ten requests a second.
POLL_WAIT_MS = 25_000
#: A reply later than this means the connection is dead even without a FIN
#: (e.g. a laptop that changed networks): drop it and reconnect.
REPLY_TIMEOUT = 15.0
HISTORY_PAGE = 50
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
#: ``rate_limited`` / ``storage_unavailable`` sends are retried after this.
SEND_RETRY_DELAY = 2.0
#: A ``users``/``rooms`` list crossed by a poll reply is asked for again at most
#: this many times, then taken as it is (see :meth:`ChatClient._send_lists`).
LIST_PAIRING_TRIES = 5


class ChatClient(RoomActions):
    """Everything the window shows, kept in step with the core by :meth:`tick`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        connect_timeout: float = CONNECT_TIMEOUT,
        tls: TLSOptions | None = None,
        known_hosts: KnownHosts | None = None,
    ) -> None:
        self.host = host
        self.port = port
        #: None: plaintext. Otherwise every connection is TLS, never plaintext by itself.
        self.tls = tls
        self.known_hosts = known_hosts if known_hosts or tls is None else KnownHosts()
        #: The current (or last) connection's protection, for the view.
        self.security: Security | None = None
        #: Why the last attempt did not trust the server (its summary is also ``error``).
        self.refusal: Refusal | None = None
        self._clock = clock
        self._connect_timeout = connect_timeout
        self.phase = LOGGED_OUT
        self.error: str | None = None  # text for a person, or None
        self.username: str | None = None
        self.login_name = ""  # pre-fills the login form after a refused resume
        self.users: dict[str, User] = {}
        self.rooms: dict[str, Room] = {}
        #: room -> its member names as last listed (``room_members``), kept up to
        #: date by ``member`` events; online dots come from ``users``.
        self.members: dict[str, list[str]] = {}
        self.conv: Conversation | None = None  # the open conversation
        self.cursor: int | None = None
        self.drafts: dict[str, str] = {}  # by Conversation.key: "Bob", "#general"
        self.reconnect_attempts = 0
        self._token: str | None = None
        self._conn: Connection | None = None
        self._dial: Dialer | None = None
        #: The login or resume to send once the dialer has a trusted connection.
        self._hello: tuple[str, dict[str, Any]] | None = None
        self._ids = itertools.count(1)
        self._inflight: dict[int, tuple[str, dict[str, Any], float]] = {}
        self._outbox: dict[str, dict[str, Any]] = {}  # client_msg_id -> pending message
        self._retry_at = 0.0
        self._changes: set[str] = set()
        self._poll_replies = 0  # poll replies applied on this connection
        self._wanted: dict[str, int] = {}  # list purpose to ask for -> tries so far

    # -- what the view reads ----------------------------------------------------------
    @property
    def peer(self) -> str | None:
        """The other user of the open direct conversation (None for a room)."""
        return self.conv.peer if self.conv and not self.conv.is_room else None

    @property
    def room(self) -> str | None:
        """The open room's name (None for a direct conversation)."""
        return self.conv.peer if self.conv and self.conv.is_room else None

    @property
    def conv_key(self) -> str | None:
        return self.conv.key if self.conv else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The open conversation's confirmed messages, oldest first."""
        return self.conv.messages if self.conv else []

    @property
    def has_more(self) -> bool:
        return bool(self.conv and self.conv.has_more)

    def sorted_users(self) -> list[User]:
        """Online users first, then by name (case-insensitive)."""
        return sorted(self.users.values(), key=lambda u: (not u.online, u.username.casefold()))

    @property
    def total_unread(self) -> int:
        """Unread messages from people and in joined rooms (the window title's count)."""
        people = sum(u.unread for u in self.users.values())
        return people + sum(r.unread for r in self.rooms.values() if r.joined)

    def visible_messages(self) -> list[dict[str, Any]]:
        """The open conversation: confirmed messages, then our unconfirmed ones."""
        if self.conv is None:
            return []
        pending = [m for m in self._outbox.values() if self.conv.holds(m, self.username)]
        return self.messages + pending

    def mentions_me(self, msg: dict[str, Any]) -> bool:
        """True for a room message from someone else with ``@`` and this user's name."""
        me = self.username
        if not me or "room" not in msg or msg.get("from") == me:
            return False
        low = me.lower()
        return me in mentioned(msg.get("text", ""), lambda n: me if n == low else None)

    def _online(self, name: str) -> bool:
        user = self.users.get(name)
        return bool(user and user.online)

    @property
    def pending_count(self) -> int:
        return len(self._outbox)

    def retry_in(self) -> float:
        return max(0.0, self._retry_at - self._clock())

    @property
    def trust_question(self) -> TrustQuestion | None:
        """A server certificate waiting for the person's yes or no (see answer_trust)."""
        return self._dial.question if self._dial is not None else None

    @property
    def plan(self) -> str:
        """What connecting will do, e.g. ``TLS to 127.0.0.1:5051``."""
        return plan(self.host, self.port, self.tls)

    # -- actions from the view --------------------------------------------------------
    def login(self, username: str, password: str) -> None:
        """Start a login; the password is sent only once the server is trusted."""
        if self.phase in (LOGGING_IN, READY, CLOSED):
            return
        self._drop_connection()
        self.login_name = username
        self.error = None
        self.refusal = None
        self.security = None  # shown again once this attempt has a trusted connection
        self.phase = LOGGING_IN
        self._dial_then("login", {"username": username, "password": password})
        self._changed("phase", "security")

    def answer_trust(self, accept: bool) -> None:
        """The person's answer to ``trust_question``: accept (remembered in the
        known-hosts file, then the login goes on) or refuse (nothing is sent)."""
        question = self.trust_question
        if question is None or self._dial is None:
            return
        if accept:
            problem = self._dial.accept()
            if problem:
                self.error = problem + " It is trusted until you quit."
                self._changed("status")
        else:
            self._refused(refused_by_user(question.host, question.port))
        self._changed("trust")

    def open_conversation(self, peer: str) -> None:
        if peer == self.peer or peer not in self.users:
            return
        self.conv = Conversation(peer)
        self._load_history(kind="open")
        self._changed("conversation", "users", "rooms")

    def open_room(self, name: str) -> bool:
        """Open a joined room's conversation; False if there is no such joined room."""
        room = self.rooms.get(name)
        if room is None or not room.joined:
            return False
        if name != self.room:
            self.conv = Conversation(name, is_room=True)
            self._load_history(kind="open")
            self._changed("conversation", "users", "rooms")
        return True

    def close_conversation(self) -> None:
        if self.conv is not None:
            self.conv = None
            self._changed("conversation", "users", "rooms")

    def load_older(self) -> bool:
        """Ask for the page before the oldest message shown; False if there is none."""
        conv = self.conv
        if conv is None or not conv.has_more or conv.loading or self.phase != READY:
            return False
        self._load_history(kind="older", before=conv.oldest_id)
        return True

    def send(self, text: str) -> bool:
        """Queue ``text`` to the open conversation; False (nothing sent) if unusable."""
        if self.conv is None or not text.strip() or self.phase == CLOSED:
            return False
        # The core's limit, checked here so a person gets the message before a round trip.
        if len(text) > MAX_TEXT_CHARS:
            self.error = (
                f"That message has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}."
            )
            self._changed("status")
            return False
        cid = uuid.uuid4().hex
        item: dict[str, Any] = {"id": None, "from": self.username}
        item["room" if self.conv.is_room else "to"] = self.conv.peer
        item.update({"text": text, "ts": iso_timestamp(), "client_msg_id": cid, "pending": True})
        self._outbox[cid] = item
        self._flush_outbox()
        if self._conn is not None:
            self._conn.flush()  # on the wire now, not at the next tick
        self._changed("conversation")
        return True

    def set_draft(self, key: str, text: str) -> None:
        """Keep ``text`` for the conversation ``key`` (a peer's name, or ``#room``)."""
        if text:
            self.drafts[key] = text
        else:
            self.drafts.pop(key, None)

    def close(self) -> None:
        """Send ``exit`` (the user goes offline, the token ends) and stop."""
        if self._conn is not None and self.phase == READY:
            self._conn.close_gracefully({"purpose": "exit", "id": next(self._ids)})
        self._drop_connection()
        self._token = None
        self.phase = CLOSED
        self._changed("phase")

    # -- the heartbeat ----------------------------------------------------------------
    def tick(self) -> set[str]:
        """Advance IO and state; return what changed since the last tick."""
        self._advance_dial()
        conn = self._conn
        if conn is not None:
            for packet in conn.pump():
                self._on_packet(packet)
            if conn is self._conn and conn.closed:
                self._on_connection_lost(conn.error or "connection closed")
            elif conn is self._conn:
                self._check_timeouts()
        if (
            self.phase == RECONNECTING
            and self._conn is None
            and self._dial is None
            and self._clock() >= self._retry_at
        ):
            self._start_resume()
        if self.phase == READY:
            self._ensure_poll()
            self._send_lists()  # after the poll: see _send_lists
            self._flush_outbox()
        self._advance_dial()  # one started this tick connects now, not 100 ms later
        if self._conn is not None:
            # Requests queued during this tick leave now, not 100 ms later.
            for packet in self._conn.pump():
                self._on_packet(packet)
        changes, self._changes = self._changes, set()
        return changes

    # -- connection lifecycle ---------------------------------------------------------
    def _dial_then(self, purpose: str, fields: dict[str, Any]) -> None:
        """Open a trusted connection, then send ``purpose`` (login or resume) on it."""
        self._hello = (purpose, fields)
        self._dial = Dialer(
            self.host,
            self.port,
            self.tls,
            self.known_hosts,
            connect_timeout=self._connect_timeout,
            clock=self._clock,
        )

    def _advance_dial(self) -> None:
        dial = self._dial
        if dial is None:
            return
        asking = dial.question is not None
        dial.pump()
        if dial.question is not None and not asking:
            self._changed("trust")
        if dial.connection is not None:
            self._dial = None
            self._conn = dial.connection
            self.security = dial.security
            hello, self._hello = self._hello, None
            if hello is not None:
                self._request(*hello)
            self._changed("security")
        elif dial.refusal is not None:
            self._refused(dial.refusal)
        elif dial.error is not None:
            self._on_connection_lost(dial.error)

    def _refused(self, refusal: Refusal) -> None:
        """The server is not trusted: stop (no retry loop) and say why on the login screen."""
        self._drop_connection()
        if self.phase in (READY, RECONNECTING):
            # The session cannot go on with an untrusted server; a new login must
            # be a deliberate act, after the person has read the warning.
            self._token = None
            self.reconnect_attempts = 0
        self.phase = LOGGED_OUT
        self.refusal = refusal
        self.error = refusal.summary
        self._changed("phase", "status", "trust")

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        if self._dial is not None:
            self._dial.close()
        self._dial = None
        self._hello = None  # a login's password goes with its attempt
        inflight = list(self._inflight.values())
        self._inflight.clear()
        if self.conv is not None:
            self.conv.loading = False
        for item in self._outbox.values():
            item.pop("inflight", None)
        for _, context, _ in inflight:
            done = context.get("done")
            if done is not None:  # a room action whose answer will never come
                done(False, "The connection to the server was lost; try again.")

    def _start_resume(self) -> None:
        self._dial_then("resume", {"token": self._token})
        self._changed("status")

    def _on_connection_lost(self, reason: str) -> None:
        self._drop_connection()
        if self.phase == LOGGING_IN:
            self.phase = UNREACHABLE
            self.error = f"Cannot reach the server at {self.host}:{self.port} ({reason})."
        elif self.phase in (READY, RECONNECTING):
            if self.phase == READY:
                self.reconnect_attempts = 0
                log.warning("connection lost (%s); reconnecting", reason)
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**self.reconnect_attempts)
            self._retry_at = self._clock() + delay * random.uniform(0.8, 1.2)
            self.reconnect_attempts += 1
            self.phase = RECONNECTING
            self.error = "reconnecting…"
        self._changed("phase", "status")

    def _check_timeouts(self) -> None:
        now = self._clock()
        for purpose, _, sent in self._inflight.values():
            limit = REPLY_TIMEOUT + (POLL_WAIT_MS / 1000 if purpose == "poll" else 0)
            if now - sent > limit:
                self._on_connection_lost(f"no reply to {purpose} in {limit:.0f} s")
                return

    # -- requests and replies ---------------------------------------------------------
    def _request(self, purpose: str, fields: dict[str, Any], **context: Any) -> None:
        assert self._conn is not None
        rid = next(self._ids)
        self._inflight[rid] = (purpose, context, self._clock())
        self._conn.send({"purpose": purpose, "id": rid, **fields})

    def _on_packet(self, packet: dict[str, Any]) -> None:
        entry = self._inflight.pop(packet.get("id"), None)  # type: ignore[arg-type]
        if entry is None:
            if packet.get("error") == "server_busy":
                log.warning("server busy: %s", packet.get("message"))
            return
        purpose, context, _ = entry
        handler = getattr(self, f"_on_{purpose}", None)
        if handler is not None:
            handler(packet, **context)

    def _on_login(self, reply: dict[str, Any]) -> None:
        if reply.get("ok"):
            self._start_session(reply)
            return
        self._drop_connection()
        self.phase = LOGGED_OUT
        self.error = reply.get("message") or "Login failed."
        self._changed("phase", "status")

    def _on_resume(self, reply: dict[str, Any]) -> None:
        if reply.get("ok"):
            self._start_session(reply)
            return
        self._drop_connection()
        if reply.get("error") == "invalid_token":
            # Only the token was kept, so the person logs in again; peer and
            # drafts survive so they land back where they were.
            self._token = None
            self.phase = LOGGED_OUT
            self.error = "Your session has ended. Please log in again."
            self._changed("phase", "status")
        else:
            self.phase = READY  # treated as a lost connection: back off and retry
            self._on_connection_lost(reply.get("message") or "resume failed")

    def _start_session(self, reply: dict[str, Any]) -> None:
        resumed = self.phase == RECONNECTING
        self.username = reply["username"]
        self.login_name = self.username
        self._token = reply["token"]
        # The lists hold every event up to this cursor; polls start from it.
        self.cursor = reply["cursor"]
        self._poll_replies = 0
        self._wanted.clear()
        self.phase = READY
        self.error = None
        self.reconnect_attempts = 0
        before = self.total_unread
        self._set_users(reply["users"], ring=False)
        self._set_rooms(reply.get("rooms", []))
        if resumed and self.total_unread > before:
            self._changed("bell")
        if self.conv is not None:
            self._load_history(kind="reload")
        log.info("%s as %s", "resumed" if resumed else "logged in", self.username)
        self._changed("phase", "status", "users", "rooms")

    def _ensure_poll(self) -> None:
        if not any(p == "poll" for p, _, _ in self._inflight.values()):
            self._request("poll", {"cursor": self.cursor, "wait_ms": POLL_WAIT_MS})

    def _want(self, *purposes: str) -> None:
        """Ask for fresh ``users``/``rooms`` lists at the next tick."""
        for p in purposes:
            self._wanted.setdefault(p, 0)

    def _send_lists(self) -> None:
        """Send the wanted list requests, each paired with the event stream.

        A list counts every event up to the cursor in its reply; we count
        events on top of it, so we must know which events it already holds.
        A poll is always open when a list is asked for (``_ensure_poll`` ran
        first) and the core answers one connection's requests in order, so if
        no poll reply arrives between the request and its reply, that poll was
        held while the core built the list: every message, room, member and
        read event the list counts had reached us before. Otherwise the list is
        asked for again (docs/protocol.md#events-and-cursors). Presence may
        arrive up to 100 ms after a list shows it; applying it again changes
        nothing.
        """
        if not self._wanted or self._conn is None:
            return
        busy = {p for p, _, _ in self._inflight.values()}
        for purpose, tries in list(self._wanted.items()):
            if purpose in busy:
                continue  # asked already; its reply (or its retry) will do
            del self._wanted[purpose]
            self._request(purpose, {}, polls=self._poll_replies, tries=tries)

    def _paired(self, reply: dict[str, Any], purpose: str, polls: int, tries: int) -> bool:
        """True if the list ``reply`` may be applied; else it is asked for again."""
        if not reply.get("ok"):
            log.warning("%s refused: %s", purpose, reply.get("message"))
            return False
        if polls != self._poll_replies and tries + 1 < LIST_PAIRING_TRIES:
            self._wanted[purpose] = tries + 1
            return False
        return True

    def _on_poll(self, reply: dict[str, Any]) -> None:
        if not reply.get("ok"):
            log.warning("poll refused: %s", reply.get("message"))
            return
        self._poll_replies += 1
        self.cursor = reply["cursor"]
        if reply.get("reset"):
            # The server lost our place (restart or long absence): reload it all.
            self._want("users", "rooms")
            if self.conv is not None:
                self._load_history(kind="reload")
        for event in reply.get("events", []):
            kind = event.get("type")
            if kind == "message":
                msg = event["message"]
                if "room" in msg:
                    self._on_room_message(msg)
                else:
                    self._on_message_event(msg)
            elif kind == "presence":
                user = self.users.get(event["username"])
                if user is None:
                    self._want("users")
                else:
                    user.online = bool(event["online"])
                    self._changed("users")
            elif kind == "read":
                # Another of our sessions read a conversation: the server's count is exact.
                self._want("rooms" if "room" in event else "users")
            elif kind == "room":
                self._apply_room_view(event["room"])
            elif kind == "member":
                self._on_member_event(event)

    def _on_users(self, reply: dict[str, Any], polls: int = 0, tries: int = 0) -> None:
        if self._paired(reply, "users", polls, tries):
            self._set_users(reply["users"], ring=False)

    def _on_rooms(self, reply: dict[str, Any], polls: int = 0, tries: int = 0) -> None:
        if self._paired(reply, "rooms", polls, tries):
            self._set_rooms(reply["rooms"])

    def _set_users(self, users: list[dict[str, Any]], ring: bool) -> None:
        before = self.total_unread
        self.users = {
            u["username"]: User(u["username"], bool(u["online"]), int(u["unread"])) for u in users
        }
        self._mark_read()
        if ring and self.total_unread > before:
            self._changed("bell")
        self._changed("users")

    def _on_message_event(self, msg: dict[str, Any]) -> None:
        mine = msg["from"] == self.username
        other = msg["to"] if mine else msg["from"]
        if mine and msg.get("client_msg_id") in self._outbox:
            del self._outbox[msg["client_msg_id"]]
        if other not in self.users:
            self._want("users")
        if other == self.peer:
            self._add_messages([msg])
            if not mine:
                self._mark_read()
        elif not mine and other in self.users:
            self.users[other].unread += 1
            self._changed("users", "bell")

    def _load_history(self, kind: str, before: int | None = None) -> None:
        if self.phase != READY or self._conn is None or self.conv is None:
            return
        target = "room" if self.conv.is_room else "with"
        fields: dict[str, Any] = {target: self.conv.peer, "limit": HISTORY_PAGE}
        if before is not None:
            fields["before"] = before
        self.conv.loading = True
        self._request("history", fields, kind=kind, conv=self.conv)

    def _on_history(self, reply: dict[str, Any], kind: str, conv: Conversation) -> None:
        if conv is not self.conv:
            return  # the person moved on to another conversation
        conv.loading = False
        if not reply.get("ok"):
            self.error = reply.get("message")
            self._changed("status", "conversation")
            return
        page = reply["messages"]
        oldest = conv.oldest_id
        # A reload after reconnecting only says whether more exists before *its* page.
        if kind != "reload" or oldest is None or (page and page[0]["id"] <= oldest):
            conv.has_more = bool(reply["has_more"])
        self._add_messages(page)
        if kind != "older":
            self._mark_read()
        self._changed("conversation")

    def _add_messages(self, msgs: list[dict[str, Any]]) -> None:
        if self.conv is not None and self.conv.add(msgs):
            for m in msgs:
                self._outbox.pop(m.get("client_msg_id") or "", None)
            self._changed("conversation")

    def _mark_read(self) -> None:
        conv = self.conv
        if conv is None or not conv.messages or self.phase != READY:
            return
        last = conv.messages[-1]
        if conv.is_room:
            room = self.rooms.get(conv.peer)
            if room is None or not room.joined:
                return
            if room.unread or last["from"] != self.username:
                self._request("read", {"room": conv.peer, "up_to": last["id"]})
            if room.unread or room.mentions:
                room.unread = room.mentions = 0
                self._changed("rooms")
            return
        user = self.users.get(conv.peer)
        if user is None:
            return
        if user.unread or last["from"] == conv.peer:
            self._request("read", {"with": conv.peer, "up_to": last["id"]})
        if user.unread:
            user.unread = 0
            self._changed("users")

    def _flush_outbox(self) -> None:
        if self.phase != READY or self._conn is None:
            return
        now = self._clock()
        for cid, item in self._outbox.items():
            if item.get("inflight") or item.get("retry_at", 0) > now:
                continue
            item["inflight"] = True
            target = "room" if "room" in item else "to"
            # The reply carries the message: no event of it for this session, so the held
            # poll is not woken and sent again for our own message (docs/protocol.md#core-choices).
            fields = {
                target: item[target],
                "text": item["text"],
                "client_msg_id": cid,
                "echo": False,
            }
            self._request("send_message", fields, cid=cid)

    def _on_send_message(self, reply: dict[str, Any], cid: str) -> None:
        item = self._outbox.get(cid)
        if reply.get("ok"):
            msg = reply["message"]
            self._outbox.pop(cid, None)
            if self.conv is not None and self.conv.holds(msg, self.username):
                self._add_messages([msg])
            self._changed("conversation")
            return
        if item is None:
            return
        item.pop("inflight", None)
        if reply.get("error") in ("rate_limited", "storage_unavailable"):
            item["retry_at"] = self._clock() + SEND_RETRY_DELAY
        else:
            # Refused for good: give the text back to the person to fix.
            del self._outbox[cid]
            key = room_key(item["room"]) if "room" in item else item["to"]
            self.drafts[key] = item["text"]
            self._changed("conversation", "draft")
        self.error = reply.get("message") or "The message was not sent."
        self._changed("status")

    def _on_read(self, reply: dict[str, Any]) -> None:
        if not reply.get("ok"):
            log.warning("read marker refused: %s", reply.get("message"))

    def _changed(self, *what: str) -> None:
        self._changes.update(what)
