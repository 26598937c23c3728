"""The chat rules (docs/protocol.md#requests-and-replies, #events-and-cursors), no transport.

``ChatService.handle(session, request)`` returns the reply dict, or ``None``
for a ``poll`` held by ``wait_ms`` (its reply goes out later through
``session.send``), or a future of the reply when the disk must confirm first
(``--fsync always``). The TCP server is a thin adapter around it, and every
rule is tested on it directly.

Session states form a small table: a session starts ``connected``; ``login``
or ``resume`` moves it to ``logged_in``; ``exit`` or a dropped connection
ends it. Which purposes each state accepts is :data:`ALLOWED_BEFORE_LOGIN`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from .contract import (
    HISTORY_DEFAULT_LIMIT,
    HISTORY_MAX_LIMIT,
    MAX_POLL_EVENTS,
    MAX_TEXT_CHARS,
    MAX_WAIT_MS,
    SEQ_BITS,
    SEQ_MASK,
    is_text,
    iso_timestamp,
    pair_key,
)
from .conversations import ConversationIndex
from .deadlines import Deadlines
from .events import Entry, EventLog, collect, encoded_size
from .limits import SEND_BURST, SEND_RATE, HashGate, LoginThrottle, SendBuckets
from .login import PasswordLogin
from .malloc import release_free_memory
from .protocol import DEFAULT_MAX_FRAME_BYTES, PreEncoded, poll_reply_packet, poll_reply_tail
from .replication import RemoteChanges
from .rooms import RoomRules
from .session import ChatError, Session
from .store import HistoryState
from .tokens import TokenStore
from .users import UserStore
from .validation import BadRequest, get_bool, get_int, get_str

log = logging.getLogger(__name__)

#: Room left in a frame for the reply's own fields around events/messages.
REPLY_OVERHEAD = 256

#: Presence changes kept for polls that fall behind; a burst of logins past
#: this (thousands at once) makes a slow poller reload its user list.
PRESENCE_KEEP = 20_000
#: Held polls hear of presence changes at most this late (messages: at once),
#: so a wave of logins wakes each of them once per window, not once per login.
PRESENCE_WAKE_DELAY = 0.1

#: Sessions one user may have logged in at once: far above what a person
#: uses (desktop + a few browsers and tabs' sessions), far below what would let
#: one account use up the server's connections.
MAX_SESSIONS_PER_USER = 32

ALLOWED_BEFORE_LOGIN = frozenset({"login", "resume", "ping", "exit"})


def _storage_unavailable(base: dict[str, Any]) -> dict[str, Any]:
    return {
        **base,
        "ok": False,
        "error": "storage_unavailable",
        "message": "the server could not confirm the write",
    }


def _sent_before(record: dict[str, Any]) -> dict[str, Any]:
    """The reply to a retry of a message still being committed: the message, or the one
    the database found sent before (through another core)."""
    return {"message": record.get("duplicate") or record["message"]}


class ChatService(PasswordLogin, RoomRules, RemoteChanges):
    def __init__(
        self,
        users: UserStore,
        history: Any,  # HistoryStore or PgHistoryStore (mypyc checks annotations at run time)
        tokens: TokenStore,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        send_burst: float = SEND_BURST,
        send_rate: float = SEND_RATE,
        hash_gate: HashGate | None = None,
        max_sessions_per_user: int = MAX_SESSIONS_PER_USER,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        #: Seconds, only ever compared (rate limits, login lockouts).
        self.clock = clock
        #: Message timestamps (None: the system clock).
        self.wall_clock = wall_clock
        self._loop = loop
        self.users = users
        self.history = history
        self.tokens = tokens
        self.max_frame_bytes = max_frame_bytes
        self.max_sessions_per_user = max_sessions_per_user
        self.sends = SendBuckets(send_burst, send_rate)
        state = history.load()
        self.boot = state.boot
        self._next_id = state.next_id
        self._messages: list[dict[str, Any]] = []
        self._convs: dict[tuple[str, str], ConversationIndex] = {}
        self._dedup: dict[tuple[str, str], dict[str, Any]] = {}
        #: A store whose write is done only when its future is (PostgreSQL): a change
        #: is applied (kept, seen by others) once committed, and not at all if the commit
        #: fails. The file store's write is in the OS on return: applied at once.
        self.commit_first: bool = getattr(history, "commit_first", False)
        #: Messages written but not yet committed, by (sender, client_msg_id): a retry
        #: meanwhile is answered with the same message, never stored twice.
        self._inflight: dict[tuple[str, str], tuple[asyncio.Future[None], dict[str, Any]]] = {}
        #: The database numbers messages (several cores share it); files: this core.
        self._store_assigns_ids: bool = getattr(history, "assigns_ids", False)
        self._init_remote(history)
        self._load_rooms(state)
        for msg in state.messages:
            self._index(msg)
        self._markers = state.markers
        del state  # what is not kept above (e.g. the rooms' member lists) is garbage now
        # The loaded history is long-lived: move it out of the cyclic GC's
        # sight, or every full collection rescans millions of message dicts
        # and appends get slower as history grows.
        gc.collect()
        gc.freeze()
        release_free_memory()
        self._seq = 0
        self._logs: dict[str, EventLog] = {}
        #: Presence changes, shared by everyone (each skips its own).
        self._presence = EventLog(keep=PRESENCE_KEEP)
        self._presence_wake: asyncio.TimerHandle | None = None
        #: When held polls end (one timer per slot, not per poll).
        self.deadlines: Deadlines[Session] = Deadlines(self.loop, self._held_timeout)
        #: The poll-reply tail of the event being delivered (see ``_answer_with``).
        self._shared_tail: tuple[Entry, int, bytes] | None = None
        self._online: dict[str, set[Session]] = {}
        self.throttle = LoginThrottle()
        self.hash_gate = hash_gate if hash_gate is not None else HashGate(clock=clock)
        self.closing = False
        # Rooms need the logs above; the user list may have changed while we were down.
        self.enroll_users()
        users.on_change = self.enroll_users
        log.info(
            "loaded %d messages, %d users (boot %d)",
            len(self._messages),
            len(users.names()),
            self.boot,
        )

    # -- state helpers --------------------------------------------------------
    def _index(self, msg: dict[str, Any]) -> None:
        self._messages.append(msg)
        if "room" in msg:
            self._index_room_message(msg)
        else:
            self._conv(msg["from"], msg["to"]).add(msg)
        if "client_msg_id" in msg:
            self._dedup[(msg["from"], msg["client_msg_id"])] = msg

    def _add_message(self, msg: dict[str, Any], skip: int = 0) -> None:
        """Keep a committed message (this core's or another's) and tell its recipients
        here, but not the session ``skip`` (one that sent it with ``echo: false``)."""
        self._index(msg)
        if "room" in msg:
            recipients: Any = self._rooms[msg["room"]].members  # _index made sure it exists
        else:
            recipients = (msg["from"], msg["to"])
        self._emit_many(recipients, {"type": "message", "message": msg}, skip)

    def _conv(self, a: str, b: str) -> ConversationIndex:
        key = pair_key(a, b)
        conv = self._convs.get(key)
        if conv is None:
            conv = self._convs[key] = ConversationIndex()
        return conv

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop timers and futures belong to: the one given, else the running one."""
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put timers and futures on ``loop`` from now on: asking asyncio for the running
        loop costs a ``getpid`` syscall, once per held poll."""
        self._loop = loop

    def is_online(self, name: str) -> bool:
        return RemoteChanges.is_online(self, name)

    def cursor(self) -> int:
        return (self.boot << SEQ_BITS) | self._seq

    def snapshot(self) -> HistoryState:
        rooms, room_markers = self._room_state()
        return HistoryState(
            self._messages,
            self._markers,
            self._next_id,
            self.boot,
            rooms,
            room_markers,
            self._enrolled,
        )

    def unread(self, user: str, peer: str) -> int:
        conv = self._convs.get(pair_key(user, peer))
        if conv is None:
            return 0
        ids = conv.sent.get(peer)
        if not ids:
            return 0
        marker = self._markers.get(user, {}).get(peer, 0)
        return len(ids) - bisect_right(ids, marker)

    def user_list(self, user: str) -> list[dict[str, Any]]:
        return [
            {"username": n, "online": self.is_online(n), "unread": self.unread(user, n)}
            for n in self.users.names()
            if n != user
        ]

    def _emit(self, user: str, event: dict[str, Any], skip: int = 0) -> None:
        """Append an event to one user's log and wake their held polls (but ``skip``'s)."""
        if user in self._logs:
            self._seq += 1
            self._deliver(user, Entry(self._seq, event, skip, encoded_size(event)), skip)

    def _emit_many(self, users: Any, event: dict[str, Any], skip: int = 0) -> None:
        """One event for many users: encoded once, one shared entry appended to each log."""
        shared = PreEncoded(event)
        self._seq += 1
        entry = Entry(self._seq, shared, skip, len(shared.json))
        for user in users:
            self._deliver(user, entry, skip)

    def _deliver(self, user: str, entry: Entry, skip: int) -> None:
        ulog = self._logs.get(user)
        if ulog is None:
            return  # never logged in this run: their next login starts fresh
        ulog.append(entry)
        sessions = self._online.get(user)
        if not sessions:
            return
        for s in list(sessions):
            if s.held is None:
                continue
            if s.id == skip:
                self._pass_over(s, ulog, entry)
            elif not self._answer_with(s, ulog, entry):
                self._answer_held(s)

    def _pass_over(self, session: Session, ulog: EventLog, entry: Entry) -> None:
        """Move a held poll's cursor past an event it must not see, when nothing before
        that event is waiting for it: its next answer then takes the fast path
        (``_answer_with``) instead of merging the logs to skip the event."""
        cursor = session.cursor
        seq = cursor & SEQ_MASK
        seqs, presence = ulog.seqs, self._presence.seqs
        if (
            cursor >> SEQ_BITS == self.boot
            and ulog.trimmed <= seq
            and (len(seqs) < 2 or seqs[-2] <= seq)
            and (not presence or presence[-1] <= seq)
        ):
            session.cursor = (self.boot << SEQ_BITS) | entry.seq

    def _answer_with(self, session: Session, ulog: EventLog, entry: Entry) -> bool:
        """Answer a held poll whose only news is ``entry``, from bytes made once per event.

        The common case of a room message reaching thousands of waiting members:
        no merge of logs, no reply dict, no encode per member. False (nothing
        done) when anything else is pending for the session; ``_answer_held``
        then does the general work.
        """
        if session.send_packet is None or type(entry.event) is not PreEncoded:
            return False
        cursor = session.cursor
        seq = cursor & SEQ_MASK
        seqs, presence = ulog.seqs, self._presence.seqs
        if (
            cursor >> SEQ_BITS != self.boot
            or ulog.trimmed > seq
            or (len(seqs) > 1 and seqs[-2] > seq)
            or (presence and presence[-1] > seq)
            or entry.size + REPLY_OVERHEAD > self.max_frame_bytes
        ):
            return False
        shared = self._shared_tail
        if shared is None or shared[0] is not entry:
            new_cursor = (self.boot << SEQ_BITS) | entry.seq
            shared = self._shared_tail = (
                entry,
                new_cursor,
                poll_reply_tail(new_cursor, entry.event),
            )
        base, slot = session.held  # type: ignore[misc]
        self.deadlines.cancel(session, slot)
        session.held = None
        session.cursor = shared[1]
        stream = session.stream_wait is not None
        session.send_packet(poll_reply_packet(base.get("id"), shared[2], stream))
        if stream:
            self._hold(session, base)
        return True

    # -- entry point --------------------------------------------------------------
    def handle(
        self, session: Session, req: dict[str, Any]
    ) -> dict[str, Any] | asyncio.Future[dict[str, Any]] | None:
        purpose = req["purpose"]
        rid = req.get("id")
        base: dict[str, Any] = {"purpose": purpose}
        if rid is not None:
            # Decoded JSON: an id is exactly an int (not a bool), a str, or something else.
            kind = type(rid)
            if kind is not int and (kind is not str or len(rid) > 64 or not is_text(rid)):
                return {
                    **base,
                    "ok": False,
                    "error": "bad_request",
                    "message": "id must be an integer or a string of at most 64 characters",
                }
            base["id"] = rid
        handler = HANDLERS.get(purpose)
        try:
            if handler is None:
                raise ChatError("unknown_purpose", f"unknown purpose {purpose!r}")
            if session.username is None and purpose not in ALLOWED_BEFORE_LOGIN:
                raise ChatError("not_logged_in", "log in first")
            result = handler(self, session, req, base)
        except BadRequest as bad:
            return {**base, "ok": False, "error": "bad_request", "message": str(bad)}
        except ChatError as exc:
            return {**base, "ok": False, "error": exc.code, "message": exc.message}
        if result is None or isinstance(result, asyncio.Future):
            return result
        return {**base, "ok": True, **result}

    # -- login, resume, exit ----------------------------------------------------
    def _resume(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        if session.username is not None:
            raise BadRequest("already logged in; resume on a new connection")
        token = get_str(req, "token", max_len=256)
        self.users.refresh()
        name = self.tokens.check(token, self.users.fingerprint)
        find = getattr(self.tokens, "find", None)
        if name is None and find is not None:
            # Issued a moment ago on another core, perhaps: ask the database first.
            return self._after(
                find(token),
                base,
                lambda: self._resumed(
                    session, self.tokens.check(token, self.users.fingerprint), token
                ),
            )
        return self._resumed(session, name, token)

    def _resumed(self, session: Session, name: str | None, token: str) -> dict[str, Any]:
        if session.closed:
            raise ChatError("not_logged_in", "the connection closed during resume")
        if session.username is not None:
            raise BadRequest("already logged in; resume on a new connection")
        if name is None or not self.users.exists(name):
            raise ChatError("invalid_token", "this session has ended; log in again")
        self._check_sessions(name)
        return self._start_session(session, name, token)

    def _after(
        self, work: Any, base: dict[str, Any], then: Callable[[], dict[str, Any]]
    ) -> asyncio.Future[dict[str, Any]]:
        """Reply with ``then()`` once the coroutine ``work`` (a database read) is done."""
        task = self.loop().create_task(work)
        reply: asyncio.Future[dict[str, Any]] = self.loop().create_future()

        def done(t: asyncio.Task[Any]) -> None:
            if reply.done():
                return
            error = None if t.cancelled() else t.exception()
            if isinstance(error, ChatError):
                reply.set_result(
                    {**base, "ok": False, "error": error.code, "message": error.message}
                )
                return
            if t.cancelled() or error is not None:
                reply.set_result(_storage_unavailable(base))
                return
            try:
                reply.set_result({**base, "ok": True, **then()})
            except ChatError as exc:
                reply.set_result({**base, "ok": False, "error": exc.code, "message": exc.message})
            except BadRequest as bad:
                reply.set_result({**base, "ok": False, "error": "bad_request", "message": str(bad)})

        task.add_done_callback(done)
        return reply

    def _check_sessions(self, name: str) -> None:
        """Refuse a session past the per-user cap (docs/protocol.md#limits-per-client)."""
        open_now = len(self._online.get(name, ()))
        if open_now >= self.max_sessions_per_user:
            raise ChatError(
                "too_many_sessions",
                f"{name} already has {open_now} sessions open, the most allowed; "
                "log out of one (or close a browser tab) and try again",
            )

    def _start_session(self, session: Session, name: str, token: str) -> dict[str, Any]:
        session.username = name
        session.token = token
        if name not in self._logs:
            self._logs[name] = EventLog()
        session.cursor = self.cursor()
        sessions = self._online.setdefault(name, set())
        sessions.add(session)
        if len(sessions) == 1:
            self._share_presence(name, True)
            if name not in self._remote_online:  # else online on another core already
                self._broadcast_presence(name, True)
                session.cursor = self.cursor()  # own presence event is not news to us
        log.info("%s logged in (session %d, %s)", name, session.id, session.peer)
        return {
            "username": name,
            "users": self.user_list(name),
            "rooms": self.room_list(name),
            "cursor": session.cursor,
            "token": token,
        }

    def _broadcast_presence(self, name: str, online: bool) -> None:
        # Encoded once: every session receives it, and a session catching up after a
        # wave of logins gets 500 of them per reply, spliced rather than encoded.
        event = PreEncoded({"type": "presence", "username": name, "online": online})
        self._seq += 1
        self._presence.append(Entry(self._seq, event, name, len(event.json)))
        # Every held poll wants to hear it: waking them all per change made a
        # wave of N logins O(N^2) replies. One wake-up pass per short window
        # delivers all the window's changes at once.
        if self._presence_wake is None:
            try:
                loop = self.loop()
            except RuntimeError:  # no loop (offline tools): nobody can be held
                return
            self._presence_wake = loop.call_later(PRESENCE_WAKE_DELAY, self._wake_for_presence)

    def _wake_for_presence(self) -> None:
        self._presence_wake = None
        for sessions in list(self._online.values()):
            for s in list(sessions):
                if s.held is not None:
                    self._answer_held(s)  # answers only if something is new for it

    def _exit(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        if session.token is not None:
            self.tokens.revoke(session.token)
        session.exited = True
        self.disconnect(session)
        return {}

    def disconnect(self, session: Session) -> None:
        """The connection is gone (or exited): end the session, update presence."""
        if session.closed:
            return
        session.closed = True
        if session.held is not None:
            self.deadlines.cancel(session, session.held[1])
            session.held = None
        if session.token is not None and not session.exited:
            self.tokens.touch(session.token)
        name = session.username
        if name is None:
            return
        sessions = self._online.get(name)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._online[name]
                self._share_presence(name, False)
                # At shutdown nobody is left to tell: O(n) not O(n^2).
                if not self.closing and name not in self._remote_online:
                    self._broadcast_presence(name, False)
        log.info("%s left (session %d)", name, session.id)

    def _ping(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        return {}

    def _users(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        self.users.refresh()
        # The cursor pairs the list with an event position: the list reflects
        # every event up to it, so a client reloading polls on from there.
        return {"users": self.user_list(session.username), "cursor": self.cursor()}  # type: ignore[arg-type]

    # -- messages -----------------------------------------------------------------
    def _peer(self, session: Session, req: dict[str, Any], field: str) -> str:
        peer = get_str(req, field, max_len=64)
        if peer == session.username or (
            not self.users.exists(peer) and not (self.users.refresh() and self.users.exists(peer))
        ):
            raise ChatError("unknown_user", f"no other user named {peer!r}")
        return peer

    def _target(self, session: Session, req: dict[str, Any], field: str) -> tuple[str, Any]:
        """``("peer", name)`` or ``("room", Room)``: exactly one of ``field`` and ``room``."""
        if (field in req) == ("room" in req):
            raise BadRequest(f"give exactly one of {field!r} and 'room'")
        if field in req:
            return "peer", self._peer(session, req, field)
        return "room", self._room(session, req)

    def _take_send_token(self, user: str) -> None:
        if self.sends.rate and not self.sends.take(user, self.clock()):
            raise ChatError("rate_limited", "you are sending too fast; wait a moment")

    def _send_message(self, session: Session, req: dict[str, Any], base: dict[str, Any]):
        sender: str = session.username  # type: ignore[assignment]
        kind, target = self._target(session, req, "to")
        text = get_str(req, "text", max_len=None)
        cmid = get_str(req, "client_msg_id", max_len=64, required=False)
        # ``echo: false``: the reply carries the message, so this session needs no event of
        # it; its held poll is not woken for it (docs/protocol.md#core-choices).
        skip = 0 if get_bool(req, "echo", required=False) is not False else session.id
        if cmid is not None:
            original = self._dedup.get((sender, cmid))
            if original is not None:
                return {"message": original}
            inflight = self._inflight.get((sender, cmid))
            if inflight is not None:
                pending, sent = inflight
                # The database may have found it sent before, through another core.
                return self._commit_then(pending, base, partial(_sent_before, sent))
        if not text or text.isspace():  # (what strip() removes, without copying the text)
            raise ChatError("empty_text", "message text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise ChatError("text_too_long", f"messages are limited to {MAX_TEXT_CHARS} characters")
        self._take_send_token(sender)
        # With several cores the database numbers it when it commits (``_write``).
        msg: dict[str, Any] = {"id": None if self._store_assigns_ids else self._next_id}
        msg["from"] = sender
        if kind == "peer":
            msg["to"] = target
        else:
            msg["room"] = target.name
        msg["text"] = text
        msg["ts"] = iso_timestamp(self.wall_clock)
        if cmid is not None:
            msg["client_msg_id"] = cmid
        record = {"op": "message", "message": msg}
        commit = self._write(record, "messages")
        self._next_id += 1
        if commit is None:  # in the OS already (the file store, fsync everysec)
            return self._apply_sent(record, skip)
        if cmid is not None and self.commit_first:
            key = (sender, cmid)
            self._inflight[key] = (commit, record)
            commit.add_done_callback(partial(self._forget_inflight, key))
        # No closure in this method: compiled, one would cost an object per message.
        return self._commit_then(commit, base, partial(self._apply_sent, record, skip))

    def _forget_inflight(self, key: tuple[str, str], _: object) -> None:
        self._inflight.pop(key, None)

    def _apply_sent(self, record: dict[str, Any], skip: int) -> dict[str, Any]:
        """Keep a written message and tell its recipients; the reply's fields."""
        if "duplicate" in record:  # sent before, through another core: that one
            return {"message": record["duplicate"]}
        msg = record["message"]
        self._add_message(msg, skip)
        self._maybe_compact()
        return {"message": msg}

    def _commit_then(
        self,
        commit: asyncio.Future[None] | None,
        base: dict[str, Any],
        apply: Callable[[], dict[str, Any]],
    ) -> dict[str, Any] | asyncio.Future[dict[str, Any]]:
        """Apply a journaled change and reply: at once with the file store (the reply
        waits for the fsync if asked), after the commit with a commit-first store, where
        a failed commit applies nothing and answers ``storage_unavailable``."""
        if commit is None:
            return apply()
        # The file store's write is in the OS already: applied now, only the reply waits.
        fields = None if self.commit_first else apply()
        reply: asyncio.Future[dict[str, Any]] = self.loop().create_future()

        def done(f: asyncio.Future[None]) -> None:
            # Committed is committed: applied even if the asker hung up (its reply
            # future was cancelled), so memory and the database agree.
            if f.cancelled() or f.exception() is not None:
                result = _storage_unavailable(base)
            else:
                try:
                    result = {**base, "ok": True, **(apply() if fields is None else fields)}
                except ChatError as exc:  # the database said no (a room name taken meanwhile)
                    result = {**base, "ok": False, "error": exc.code, "message": exc.message}
                except Exception:  # a bug must not leave the request unanswered
                    log.exception("applying a committed %r failed", base.get("purpose"))
                    result = {
                        **base,
                        "ok": False,
                        "error": "internal_error",
                        "message": "the server failed on this request",
                    }
            if not reply.done():
                reply.set_result(result)

        commit.add_done_callback(done)
        return reply

    def _maybe_compact(self) -> None:
        if self.history.needs_compaction():
            self.history.compact_in_background(self.snapshot)

    def _history(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        kind, target = self._target(session, req, "with")
        before = get_int(req, "before", required=False)
        limit = get_int(req, "limit", required=False, lo=1, hi=HISTORY_MAX_LIMIT)
        limit = HISTORY_DEFAULT_LIMIT if limit is None else limit
        if kind == "room":
            conv = target.index
        else:
            conv = self._convs.get(pair_key(session.username, target))  # type: ignore[arg-type]
        if conv is None:
            return {"messages": [], "has_more": False}
        end = len(conv.ids) if before is None else bisect_left(conv.ids, before)
        start = max(0, end - limit)
        budget = self.max_frame_bytes - REPLY_OVERHEAD
        # Newest first while measuring, so a cut drops the oldest of the page.
        k = end
        while k > start:
            size = encoded_size(conv.messages[k - 1]) + 1
            if size > budget and k < end:
                break
            budget -= size
            k -= 1
        return {"messages": conv.messages[k:end], "has_more": k > 0}

    def _read(self, session: Session, req: dict[str, Any], base: dict[str, Any]) -> Any:
        user: str = session.username  # type: ignore[assignment]
        kind, target = self._target(session, req, "with")
        up_to = get_int(req, "up_to", lo=0)
        # ``echo``: this connection hears of the moved marker too. The gateway
        # asks for it: its browser tabs share one connection and each must learn
        # of a marker another tab set (docs/protocol.md#core-choices).
        echo = get_bool(req, "echo", required=False)
        if kind == "room":
            key, newest, table, field = target.name, target.newest, self._room_markers, "room"
        else:
            conv = self._convs.get(pair_key(user, target))
            key, newest, table, field = target, conv.ids[-1] if conv else 0, self._markers, "with"
        marks = table.setdefault(user, {})
        old = marks.get(key, 0)
        new = max(old, min(up_to, newest))
        if new == old:
            return {"up_to": new}
        commit = self._write({"op": "read", "user": user, field: key, "up_to": new})

        def apply() -> dict[str, Any]:
            moved = max(marks.get(key, 0), new)  # another read may have committed meanwhile
            marks[key] = moved
            self._maybe_compact()
            event = {"type": "read", field: key, "up_to": moved}
            self._emit(user, event, skip=0 if echo else session.id)
            return {"up_to": moved}

        return self._commit_then(commit, base, apply)

    # -- polling ----------------------------------------------------------------------
    def _poll(self, session: Session, req: dict[str, Any], base: dict[str, Any]):
        cursor, wait_ms = req.get("cursor"), req.get("wait_ms")
        if (
            # The desktop client's poll, twice per message it exchanges: nothing new
            # since a cursor of this run, so it is held at once (O(1), no merge of logs).
            type(cursor) is int
            and type(wait_ms) is int
            and 0 < wait_ms <= MAX_WAIT_MS
            and "stream" not in req
            and session.held is None
            and self._nothing_after(session.username, cursor)  # type: ignore[arg-type]
        ):
            session.stream_wait = None
            session.cursor = cursor
            self._hold(session, base, wait_ms / 1000)
            return None
        cursor = get_int(req, "cursor", required=False, lo=0)
        wait_ms = get_int(req, "wait_ms", required=False, lo=0, hi=MAX_WAIT_MS) or 0
        stream = get_bool(req, "stream", required=False)
        if stream and wait_ms == 0:
            raise BadRequest("a stream needs wait_ms (its keepalive)")
        if session.held is not None:
            # A newer poll on this connection ends the held one (its events so far: none).
            held_base, slot = session.held
            self.deadlines.cancel(session, slot)
            session.held = None
            session.send({**held_base, "ok": True, "cursor": session.cursor, "events": []})
        session.stream_wait = wait_ms / 1000 if stream else None
        if stream:
            base["stream"] = True
        if cursor is None:
            cursor = session.cursor
        reply = self._collect(session, cursor)
        if reply is None:
            reply = {"cursor": self.cursor(), "events": [], "reset": True}
        elif not reply["events"] and wait_ms > 0:
            # Past what it skipped (its own sends with ``echo: false``): nothing after
            # the reply's cursor is for it, so its next event takes the fast path.
            session.cursor = reply["cursor"]
            self._hold(session, base, wait_ms / 1000)
            return None
        session.cursor = reply["cursor"]
        if stream:
            # Answered now (the reply goes out on return) and held again from its cursor;
            # events beyond this reply's bound answer the stream at the next turn.
            self._hold(session, base)
            self.loop().call_soon(self._stream_more, session)
        return reply

    def _nothing_after(self, user: str, cursor: int) -> bool:
        """True if ``cursor`` is of this run, not ahead, and no event for ``user`` follows it."""
        seq = cursor & SEQ_MASK
        if cursor >> SEQ_BITS != self.boot or seq > self._seq:
            return False
        # A log's first kept seq is above what it trimmed, so "its newest is not after
        # seq" also means nothing after seq was trimmed away.
        seqs, presence = self._logs[user].seqs, self._presence.seqs
        return (not seqs or seqs[-1] <= seq) and (not presence or presence[-1] <= seq)

    def _hold(self, session: Session, base: dict[str, Any], wait: float | None = None) -> None:
        """Hold ``session``'s poll (``base``: its reply's first fields) for ``wait`` s,
        or, for a stream, for its keepalive."""
        session.held = (base, self.deadlines.add(session, wait or session.stream_wait))  # type: ignore[arg-type]

    def _stream_more(self, session: Session) -> None:
        """A stream's reply may have stopped at the bound of one reply: send the rest."""
        if session.held is not None and session.stream_wait is not None:
            self._answer_held(session)

    def _collect(self, session: Session, cursor: int) -> dict[str, Any] | None:
        """Events after ``cursor`` (None if the cursor is unknown or too old)."""
        seq = cursor & SEQ_MASK
        if cursor >> SEQ_BITS != self.boot or seq > self._seq:
            return None
        found = collect(
            [(self._logs[session.username], session.id), (self._presence, session.username)],  # type: ignore[index]
            seq,
            MAX_POLL_EVENTS,
            self.max_frame_bytes - REPLY_OVERHEAD,
        )
        if found is None:
            return None
        events, last = found
        if not events:
            last = self._seq  # nothing for us up to now: skip ahead
        return {"cursor": (self.boot << SEQ_BITS) | last, "events": events}

    def _answer_held(self, session: Session, even_if_empty: bool = False) -> None:
        base, slot = session.held  # type: ignore[misc]
        reply = self._collect(session, session.cursor)
        if reply is not None and not reply["events"] and not even_if_empty:
            return
        self.deadlines.cancel(session, slot)
        session.held = None
        if reply is None:
            reply = {"cursor": self.cursor(), "events": [], "reset": True}
        session.cursor = reply["cursor"]
        session.send({**base, "ok": True, **reply})
        if session.stream_wait is not None:
            self._hold(session, base)
            if reply["events"]:
                self.loop().call_soon(self._stream_more, session)

    def _held_timeout(self, session: Session) -> None:
        if session.held is None:
            return
        if self._presence_wake is not None:
            # Presence news is waiting for its wake-up pass: deliver it now
            # rather than skip past it.
            self._answer_held(session, even_if_empty=True)
            return
        base, _ = session.held
        session.held = None
        if session.cursor >> SEQ_BITS == self.boot:
            # Held polls are answered as soon as an event arrives, so nothing
            # between the held cursor and now is for this session.
            session.cursor = self.cursor()
        session.send({**base, "ok": True, "cursor": session.cursor, "events": []})
        if session.stream_wait is not None:
            self._hold(session, base)  # the empty reply was the stream's keepalive

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Clean shutdown: compact into history.json and close the journal."""
        self.closing = True
        self.hash_gate.close()
        if self._presence_wake is not None:
            self._presence_wake.cancel()
            self._presence_wake = None
        if self._presence_repair is not None:
            self._presence_repair.cancel()
            self._presence_repair = None
        self.tokens.close()
        try:
            self.history.compact_now(self.snapshot())
        finally:
            self.history.close()


# Built after the class: mypyc does not allow method references in a class body.
HANDLERS: dict[str, Callable[..., Any]] = {
    "login": PasswordLogin._login,
    "resume": ChatService._resume,
    "exit": ChatService._exit,
    "ping": ChatService._ping,
    "users": ChatService._users,
    "send_message": ChatService._send_message,
    "history": ChatService._history,
    "read": ChatService._read,
    "poll": ChatService._poll,
    "rooms": RoomRules._rooms_purpose,
    "create_room": RoomRules._create_room,
    "join_room": RoomRules._join_room,
    "leave_room": RoomRules._leave_room,
    "add_member": RoomRules._add_member,
    "room_members": RoomRules._room_members,
}
