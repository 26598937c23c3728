"""The desktop client's model: connection, login, users, the open conversation.

``ChatClient`` owns a non-blocking :class:`~.transport.Connection` and all the
state the window shows; it never imports Tk (docs/architecture.md#desktop-client). The
window calls :meth:`ChatClient.tick` every 100 ms; each tick moves bytes,
applies replies and events, and returns the names of what changed so the view
redraws only that. Nothing blocks and nothing runs on a thread.
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
from .conversation import Conversation, User
from .transport import CONNECT_TIMEOUT, Connection

log = logging.getLogger(__name__)

# Phases (the view picks the screen from these).
LOGGED_OUT = "logged_out"  # login form, maybe with ``error``
LOGGING_IN = "logging_in"  # connecting and waiting for the login reply
UNREACHABLE = "unreachable"  # a login attempt could not reach the server: offer Retry
READY = "ready"  # logged in, polling
RECONNECTING = "reconnecting"  # connection lost; resuming with the token, with backoff
CLOSED = "closed"  # exit sent; the client is finished

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


class ChatClient:
    """Everything the window shows, kept in step with the core by :meth:`tick`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self._clock = clock
        self._connect_timeout = connect_timeout
        self.phase = LOGGED_OUT
        self.error: str | None = None  # text for a person, or None
        self.username: str | None = None
        self.login_name = ""  # pre-fills the login form after a refused resume
        self.users: dict[str, User] = {}
        self.conv: Conversation | None = None  # the open conversation
        self.cursor: int | None = None
        self.drafts: dict[str, str] = {}
        self.reconnect_attempts = 0
        self._token: str | None = None
        self._conn: Connection | None = None
        self._ids = itertools.count(1)
        self._inflight: dict[int, tuple[str, dict[str, Any], float]] = {}
        self._outbox: dict[str, dict[str, Any]] = {}  # client_msg_id -> pending message
        self._retry_at = 0.0
        self._changes: set[str] = set()

    # -- what the view reads ----------------------------------------------------------
    @property
    def peer(self) -> str | None:
        return self.conv.peer if self.conv else None

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
        return sum(u.unread for u in self.users.values())

    def visible_messages(self) -> list[dict[str, Any]]:
        """The open conversation: confirmed messages, then our unconfirmed ones."""
        pending = [m for m in self._outbox.values() if m["to"] == self.peer]
        return self.messages + pending

    @property
    def pending_count(self) -> int:
        return len(self._outbox)

    def retry_in(self) -> float:
        return max(0.0, self._retry_at - self._clock())

    # -- actions from the view --------------------------------------------------------
    def login(self, username: str, password: str) -> None:
        """Start a login; the password lives only in the queued request bytes."""
        if self.phase in (LOGGING_IN, READY, CLOSED):
            return
        self._drop_connection()
        self.login_name = username
        self.error = None
        self.phase = LOGGING_IN
        self._conn = self._new_connection()
        self._request("login", {"username": username, "password": password})
        self._changed("phase")

    def open_conversation(self, peer: str) -> None:
        if peer == self.peer or peer not in self.users:
            return
        self.conv = Conversation(peer)
        self._load_history(kind="open")
        self._changed("conversation", "users")

    def load_older(self) -> bool:
        """Ask for the page before the oldest message shown; False if there is none."""
        conv = self.conv
        if conv is None or not conv.has_more or conv.loading or self.phase != READY:
            return False
        self._load_history(kind="older", before=conv.oldest_id)
        return True

    def send(self, text: str) -> bool:
        """Queue ``text`` to the open conversation; False (nothing sent) if unusable."""
        if self.peer is None or not text.strip() or self.phase == CLOSED:
            return False
        # The core's limit, checked here so a person gets the message before a round trip.
        if len(text) > MAX_TEXT_CHARS:
            self.error = (
                f"That message has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}."
            )
            self._changed("status")
            return False
        cid = uuid.uuid4().hex
        item = {
            "id": None,
            "from": self.username,
            "to": self.peer,
            "text": text,
            "ts": iso_timestamp(),
            "client_msg_id": cid,
            "pending": True,
        }
        self._outbox[cid] = item
        self._flush_outbox()
        if self._conn is not None:
            self._conn.flush()  # on the wire now, not at the next tick
        self._changed("conversation")
        return True

    def set_draft(self, peer: str, text: str) -> None:
        if text:
            self.drafts[peer] = text
        else:
            self.drafts.pop(peer, None)

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
        conn = self._conn
        if conn is not None:
            for packet in conn.pump():
                self._on_packet(packet)
            if conn is self._conn and conn.closed:
                self._on_connection_lost(conn.error or "connection closed")
            elif conn is self._conn:
                self._check_timeouts()
        if self.phase == RECONNECTING and self._conn is None and self._clock() >= self._retry_at:
            self._start_resume()
        if self.phase == READY:
            self._ensure_poll()
            self._flush_outbox()
        if self._conn is not None:
            # Requests queued during this tick leave now, not 100 ms later.
            for packet in self._conn.pump():
                self._on_packet(packet)
        changes, self._changes = self._changes, set()
        return changes

    # -- connection lifecycle ---------------------------------------------------------
    def _new_connection(self) -> Connection:
        return Connection(
            self.host, self.port, connect_timeout=self._connect_timeout, clock=self._clock
        )

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._inflight.clear()
        if self.conv is not None:
            self.conv.loading = False
        for item in self._outbox.values():
            item.pop("inflight", None)

    def _start_resume(self) -> None:
        self._conn = self._new_connection()
        self._request("resume", {"token": self._token})
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
        self.cursor = reply["cursor"]
        self._set_users(reply["users"], ring=resumed)
        self.phase = READY
        self.error = None
        self.reconnect_attempts = 0
        if self.peer is not None:
            self._load_history(kind="reload")
        log.info("%s as %s", "resumed" if resumed else "logged in", self.username)
        self._changed("phase", "status", "users")

    def _ensure_poll(self) -> None:
        if not any(p == "poll" for p, _, _ in self._inflight.values()):
            self._request("poll", {"cursor": self.cursor, "wait_ms": POLL_WAIT_MS})

    def _on_poll(self, reply: dict[str, Any]) -> None:
        if not reply.get("ok"):
            log.warning("poll refused: %s", reply.get("message"))
            return
        self.cursor = reply["cursor"]
        if reply.get("reset"):
            # The server lost our place (restart or long absence): reload it all.
            self._request("users", {})
            if self.peer is not None:
                self._load_history(kind="reload")
        for event in reply.get("events", []):
            kind = event.get("type")
            if kind == "message":
                self._on_message_event(event["message"])
            elif kind == "presence":
                user = self.users.get(event["username"])
                if user is None:
                    self._request("users", {})
                else:
                    user.online = bool(event["online"])
                    self._changed("users")
            elif kind == "read":
                # Another of our sessions read a conversation: the server's count is exact.
                self._request("users", {})

    def _on_users(self, reply: dict[str, Any]) -> None:
        if reply.get("ok"):
            self._set_users(reply["users"], ring=False)

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
            self._request("users", {})
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
        fields: dict[str, Any] = {"with": self.conv.peer, "limit": HISTORY_PAGE}
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
            self._changed("status")
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
        user = self.users.get(self.peer or "")
        if user is None or not self.messages or self.phase != READY:
            return
        if user.unread or self.messages[-1]["from"] == self.peer:
            self._request("read", {"with": self.peer, "up_to": self.messages[-1]["id"]})
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
            fields = {"to": item["to"], "text": item["text"], "client_msg_id": cid}
            self._request("send_message", fields, cid=cid)

    def _on_send_message(self, reply: dict[str, Any], cid: str) -> None:
        item = self._outbox.get(cid)
        if reply.get("ok"):
            msg = reply["message"]
            self._outbox.pop(cid, None)
            if msg["to"] == self.peer:
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
            self.drafts[item["to"]] = item["text"]
            self._changed("conversation", "draft")
        self.error = reply.get("message") or "The message was not sent."
        self._changed("status")

    def _on_read(self, reply: dict[str, Any]) -> None:
        if not reply.get("ok"):
            log.warning("read marker refused: %s", reply.get("message"))

    def _changed(self, *what: str) -> None:
        self._changes.update(what)
