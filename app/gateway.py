"""The gateway: each browser session is one real client of the core.

A forwarder, not a second server (docs/architecture.md#web-app): a session owns
one :class:`CoreClient` connection, logged in with the user's password once and
re-established with the ``resume`` token (the password is never kept). HTTP
calls map one-to-one onto core requests; every chat rule (validation, unread
counts, presence, read markers, throttling) stays in the core, and every event
a tab sees is one the core sent.

Polling is the one thing answered here rather than forwarded: each session's
connection keeps ONE core long-poll (``wait_ms=25000``) open at all times
(:meth:`CoreClient.stream_polls`), and each reply is appended to the session's
:class:`EventBuffer` the moment it is decoded; browser polls read that buffer
by cursor. So a 100 ms browser poll costs no core round trip, and any number
of tabs share a session without cutting each other's polls short.

Cursors: the buffer numbers events itself (see buffer.py), so a core cursor
(the one a ``users`` reply carries) is translated into a buffer position by
:meth:`Gateway.users`, from the order in which replies arrive on the one
connection, never from the order in which tasks happen to run.

Life of a session: ``login`` -> polled by its tabs -> ends on ``logout``, after
``idle_timeout`` s without a poll (``exit`` to the core: the user goes offline),
or when the core refuses its token. If the core connection drops, the pump
reconnects with backoff and ``resume``; tabs get ``core_unavailable`` meanwhile
and one ``reset`` afterwards (events in the gap are unknown: reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from typing import Any

from legacy_socket_server.client import CoreClient, CoreError, CoreUnavailable
from legacy_socket_server.tls import ClientTLS

from .buffer import EventBuffer, Poll, encode_event
from .heap import Heap
from .limits import (
    MAX_SESSIONS,
    MAX_SESSIONS_PER_ADDRESS,
    MAX_SESSIONS_PER_USER,
    FailedLogins,
    Refused,
    SessionCaps,
)

log = logging.getLogger(__name__)

#: The core holds a poll at most 30 s; 25 s leaves the client's own reply
#: timeout (wait + 10 s) well clear of it.
CORE_WAIT_MS = 25_000
#: Reconnect backoff bounds: fast enough that a restarted core is picked up
#: within a second or two, slow enough that 500 sessions do not hammer a dead port.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
#: Time allowed for a health ping and for the connect that may precede it.
HEALTH_TIMEOUT = 2.0
#: Session ids carry 256 bits; the protocol asks for at least 128.
SESSION_ID_BYTES = 32
#: Room messages whose encoding is kept for the sessions still to receive them.
ROOM_MESSAGES_SHARED = 256
#: Tries at pairing a user list with a buffer position before taking the
#: nearest one (each try that fails means a poll reply crossed the request).
USERS_PAIRING_TRIES = 5


class NotLoggedIn(Exception):
    """No session, an ended session, or a token the core refused."""


class BrowserSession:
    """One browser session (any number of tabs): a core connection and its buffer."""

    def __init__(
        self, sid: str, username: str, token: str, client: CoreClient, keep: int, address: str
    ) -> None:
        self.sid = sid
        self.username = username
        #: The browser's address (the key of the per-address caps).
        self.address = address
        self.token = token
        self.client = client
        self.buffer = EventBuffer(keep)
        #: Poll replies received on the current connection (see Gateway.users).
        self.poll_replies = 0
        self.connected = True
        self.ended = False
        self.last_poll = asyncio.get_running_loop().time()
        self.polls_in_flight = 0
        self.pump: asyncio.Task[None] | None = None

    def touch(self) -> None:
        self.last_poll = asyncio.get_running_loop().time()


class Gateway:
    """All browser sessions of this web app, keyed by their cookie value."""

    def __init__(
        self,
        core: tuple[str, int] | None = None,
        *,
        core_tls: ClientTLS | None = None,
        idle_timeout: float = 30.0,
        buffer_events: int = 1000,
        max_sessions_per_user: int = MAX_SESSIONS_PER_USER,
        max_sessions_per_address: int = MAX_SESSIONS_PER_ADDRESS,
        max_sessions: int = MAX_SESSIONS,
        failed_logins: FailedLogins | None = None,
    ) -> None:
        #: ``(host, port)`` of the core; set later for an embedded core.
        self.core = core
        self.core_tls = core_tls
        self.idle_timeout = idle_timeout
        self.buffer_events = buffer_events
        self.caps = SessionCaps(max_sessions_per_user, max_sessions_per_address, max_sessions)
        self.failed_logins = failed_logins if failed_logins is not None else FailedLogins()
        self.sessions: dict[str, BrowserSession] = {}
        self._probe: CoreClient | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.closing = False
        self._presence_events: dict[tuple[Any, ...], bytes] = {}
        self._heap = Heap()
        self._room_messages: dict[tuple[Any, ...], bytes] = {}

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name="gateway-reaper")

    def begin_shutdown(self) -> None:
        """Answer held polls now: the app is stopping."""
        self.closing = True
        for s in self.sessions.values():
            s.buffer.notify()

    async def close(self) -> None:
        """Log every session out of the core (their tokens die with this process)."""
        self._heap.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(
            *(self.end(s) for s in list(self.sessions.values())), return_exceptions=True
        )
        if self._probe is not None:
            await self._probe.close()

    async def _connect(self, timeout: float = 5.0) -> CoreClient:
        if self.core is None:
            raise CoreUnavailable("no core configured yet")
        return await CoreClient.connect(*self.core, timeout=timeout, tls=self.core_tls)

    # -- health ------------------------------------------------------------------------
    async def healthy(self) -> bool:
        """True when the core answers ``ping`` (on a connection kept for this)."""
        try:
            if self._probe is None or not self._probe.is_open:
                self._probe = await self._connect(timeout=HEALTH_TIMEOUT)
            reply = await self._probe.request("ping", timeout=HEALTH_TIMEOUT)
        except CoreUnavailable:
            return False
        return bool(reply.get("ok"))

    # -- sessions -----------------------------------------------------------------------
    def get(self, sid: str | None) -> BrowserSession:
        """The live session of cookie value ``sid``; raise :class:`NotLoggedIn` otherwise."""
        session = self.sessions.get(sid) if sid else None
        if session is None or session.ended:
            raise NotLoggedIn
        return session

    async def login(
        self, username: Any, password: Any, address: str = ""
    ) -> tuple[BrowserSession, dict[str, Any]]:
        """Log in on a new core connection; the core judges the credentials.

        The web app's own limits come first, without asking the core: failed
        logins per address, sessions per address and in all; sessions per user
        once the core has said who it is. Raise :class:`Refused` for those.
        """
        wait = self.failed_logins.retry_after(address)
        if wait:
            raise Refused(
                "rate_limited",
                f"too many failed logins from your address; try again in {int(wait) + 1} s",
            )
        self.caps.reserve(address)
        try:
            return await self._login(username, password, address)
        except BaseException:
            self.caps.release(address)
            raise

    async def _login(
        self, username: Any, password: Any, address: str
    ) -> tuple[BrowserSession, dict[str, Any]]:
        client = await self._connect()
        try:
            # ``client``: the core's hash gate is fair per browser address.
            reply = await client.call("login", username=username, password=password, client=address)
        except CoreError as exc:
            await client.close()
            if exc.code == "invalid_credentials":
                self.failed_logins.failed(address)
            raise
        except BaseException:
            await client.close()
            raise
        name = reply["username"]
        try:
            self.caps.add_user(name)
        except Refused:
            await client.exit()
            raise
        sid = secrets.token_urlsafe(SESSION_ID_BYTES)
        session = BrowserSession(sid, name, reply["token"], client, self.buffer_events, address)
        # The buffer starts empty at the login's core cursor: the list in the
        # reply is exact at the buffer's head.
        position = session.buffer.head
        stream = self._stream(session, reply["cursor"])
        self.sessions[sid] = session
        session.pump = asyncio.create_task(
            self._pump(session, stream), name=f"pump-{reply['username']}"
        )
        log.info(
            "browser session of %s started (%d sessions)", session.username, len(self.sessions)
        )
        self._heap.login()
        fields = {"username": name, "users": reply["users"], "rooms": reply.get("rooms", [])}
        return session, {**fields, "cursor": position}

    async def end(self, session: BrowserSession) -> None:
        """Log out of the core (``exit`` ends the token) and forget the session."""
        if session.ended:
            return
        self._forget(session)
        session.buffer.notify()  # held polls answer now (401)
        if session.pump is not None:
            session.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.pump
            session.pump = None  # the task's exception would hold the session in a cycle
        try:
            await session.client.exit()
        except CoreUnavailable:
            # The token outlives us only until the core's 7-day expiry.
            log.info("could not send exit for %s: core unreachable", session.username)
        log.info("browser session of %s ended (%d sessions)", session.username, len(self.sessions))

    def socket_closed(self) -> None:
        """A tab's WebSocket ended: its connection's cycles count towards a full collection."""
        self._heap.socket_closed()

    def _forget(self, session: BrowserSession) -> None:
        session.ended = True
        if self.sessions.pop(session.sid, None) is not None:
            self.caps.remove(session.username, session.address)
            self._heap.ended()

    # -- forwarding ------------------------------------------------------------------------
    async def call(self, session: BrowserSession, purpose: str, **fields: Any) -> dict[str, Any]:
        """Forward one request; raise CoreError, CoreUnavailable or NotLoggedIn."""
        if not session.connected:
            raise CoreUnavailable("reconnecting to the core")
        if purpose == "read":
            # Our tabs share this connection: ask the core to tell it too, so
            # the other tabs hear of the marker through the buffer.
            fields["echo"] = True
        return await session.client.call(purpose, **fields)

    async def users(self, session: BrowserSession) -> dict[str, Any]:
        """The core's user list, with ``cursor`` the buffer position it is exact at."""
        reply, head = await self.listing(session, "users")
        return {"users": reply["users"], "cursor": head}

    async def rooms(self, session: BrowserSession) -> dict[str, Any]:
        """The rooms this user sees, with ``cursor`` the buffer position it is exact at."""
        reply, head = await self.listing(session, "rooms")
        return {"rooms": reply["rooms"], "cursor": head}

    async def listing(self, session: BrowserSession, purpose: str) -> tuple[dict[str, Any], int]:
        """A list request (``users``, ``rooms``) and the buffer position its counts hold at.

        The list reflects every event up to the core cursor in its reply. A
        poll is open at the core whenever this is sent (the stream re-polls as
        soon as a reply is decoded), and the core processes one connection's
        requests in order, so: if no poll reply arrives between sending
        ``users`` and decoding its reply, that poll was held while the core
        built the list, hence every message and read event the list counts was
        already sent to us, and appended, before the list's reply: the
        buffer's head then is the exact position. If a poll reply crossed the
        request, the core may have built the list while events waited for the
        next poll; ask again. (Presence changes may reach the buffer up to
        100 ms after the list shows them; applying one again changes nothing.)
        """
        for _ in range(USERS_PAIRING_TRIES):
            if not session.connected:
                raise CoreUnavailable("reconnecting to the core")
            before = session.poll_replies
            reply, (head, replies) = await session.client.request_stamped(
                purpose, lambda: (session.buffer.head, session.poll_replies)
            )
            if not reply.get("ok"):
                raise CoreError(reply)
            if replies == before:
                break
        else:
            log.info("%s list of %s paired approximately (busy)", purpose, session.username)
        return reply, head

    async def poll(self, session: BrowserSession, cursor: int | None, wait_s: float) -> Poll:
        """Answer a browser poll from the buffer, waiting up to ``wait_s`` for news."""
        buf = session.buffer
        session.polls_in_flight += 1
        session.touch()
        try:
            reply = buf.collect(cursor)
            if reply.events or reply.reset:
                return reply
            if cursor is None:
                cursor = reply.cursor
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while True:
                if session.ended:
                    raise NotLoggedIn
                if not session.connected:
                    raise CoreUnavailable("reconnecting to the core")
                remaining = deadline - loop.time()
                if remaining <= 0 or self.closing:
                    return reply
                await buf.changed(remaining)
                reply = buf.collect(cursor)
                if reply.events or reply.reset:
                    return reply
        finally:
            session.polls_in_flight -= 1
            session.touch()

    # -- background work ------------------------------------------------------------------
    def _stream(self, session: BrowserSession, cursor: int) -> asyncio.Future[None]:
        """Start the session's poll stream from core cursor ``cursor``."""
        session.poll_replies = 0

        def on_reply(reply: dict[str, Any]) -> None:
            session.poll_replies += 1
            if reply.get("reset"):
                session.buffer.reset()
            session.buffer.append([self._shared(e) for e in reply["events"]])

        return session.client.stream_polls(cursor, CORE_WAIT_MS, on_reply, stream=True)

    async def _pump(self, session: BrowserSession, stream: asyncio.Future[None]) -> None:
        """Watch the session's poll stream; reconnect and resume when it ends."""
        while not session.ended:
            try:
                await stream
            except (CoreUnavailable, CoreError) as exc:
                if isinstance(exc, CoreError):
                    log.warning("core refused a poll for %s: %s", session.username, exc)
                else:
                    log.info("core connection of %s lost: %s", session.username, exc)
                await session.client.close()
            session.connected = False
            session.buffer.notify()
            resumed = await self._reconnect(session)
            if resumed is None:
                return
            stream = resumed

    def _shared(self, event: dict[str, Any]) -> bytes:
        """``event`` encoded; one object for equal events across all sessions.

        A wave of N logins puts N presence events in each of N session buffers,
        and a message to a room of N browser users reaches N sessions: sharing
        the encoding turns N copies into one (per presence state, per message).
        """
        kind = event.get("type")
        if kind == "presence":
            key: tuple[Any, ...] = (event.get("username"), event.get("online"))
            table = self._presence_events
        elif kind == "message" and "room" in event.get("message", ()):
            key = (event["message"].get("id"),)
            table = self._room_messages
        else:
            return encode_event(event)
        encoded = table.get(key)
        if encoded is None:
            encoded = table[key] = encode_event(event)
            if table is self._room_messages and len(table) > ROOM_MESSAGES_SHARED:
                del table[next(iter(table))]  # the oldest: every session has it by now
        return encoded

    async def _reconnect(self, session: BrowserSession) -> asyncio.Future[None] | None:
        """Resume the session on a new connection: its poll stream, or None if it ended."""
        delay = BACKOFF_MIN
        while not session.ended:
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, BACKOFF_MAX)
            try:
                client = await self._connect(timeout=BACKOFF_MAX)
            except CoreUnavailable:
                continue
            try:
                reply = await client.resume(session.token)
            except asyncio.CancelledError:
                await client.close()
                raise
            except CoreUnavailable:
                await client.close()
                continue
            except CoreError as exc:
                await client.close()
                log.info("core refused the token of %s (%s): session ends", session.username, exc)
                self._forget(session)
                session.buffer.notify()
                return None
            session.client = client
            session.token = reply.get("token", session.token)
            # Events between the drop and now are unknown to us: every tab reloads.
            session.buffer.reset()
            stream = self._stream(session, reply["cursor"])
            session.connected = True
            log.info("browser session of %s resumed", session.username)
            return stream
        return None

    async def _reap_idle(self) -> None:
        """Log out sessions whose tabs stopped polling (the tab was closed)."""
        interval = max(0.05, min(1.0, self.idle_timeout / 5))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            cutoff = loop.time() - self.idle_timeout
            idle = [
                s for s in self.sessions.values() if s.polls_in_flight == 0 and s.last_poll < cutoff
            ]
            for s in idle:
                log.info("browser session of %s idle: logging out", s.username)
            if idle:
                await asyncio.gather(*(self.end(s) for s in idle), return_exceptions=True)
