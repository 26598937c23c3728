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

With a shared session table (``--database-url``, app/shared_sessions.py) a session
outlives this process: a cookie this web app does not hold is looked up there and
resumed (:meth:`Gateway.resume_session`), and an idle session or a stopping web app
only *lets go* of its copy (:meth:`Gateway.drop`: the connection closes, the token and
the row stay) instead of logging it out; only ``logout`` or a refused token ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from typing import TYPE_CHECKING, Any

from legacy_socket_server.client import CoreClient, CoreError, CoreUnavailable
from legacy_socket_server.heap import Heap
from legacy_socket_server.tls import ClientTLS

from .buffer import SharedEncodings
from .forwarding import Forwarding
from .limits import (
    MAX_SESSIONS,
    MAX_SESSIONS_PER_ADDRESS,
    MAX_SESSIONS_PER_USER,
    FailedLogins,
    Refused,
    SessionCaps,
)
from .session import BrowserSession, NotLoggedIn
from .session_store import SessionStoreUnavailable

if TYPE_CHECKING:
    from .shared_sessions import SharedSessions

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


class Gateway(Forwarding):
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
        self._heap = Heap()
        #: One encoding per equal event across all sessions (buffer.py).
        self._encodings = SharedEncodings()
        #: The shared session table (``--database-url``); None: sessions live here only.
        self.shared: SharedSessions | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name="gateway-reaper")

    def begin_shutdown(self) -> None:
        """Answer held polls now: the app is stopping."""
        self.closing = True
        for s in self.sessions.values():
            s.buffer.notify()

    async def close(self) -> None:
        """Log every session out of the core (their tokens die with this process).

        With a shared session table, let go of them instead: another web app resumes
        them on the browsers' next requests, so replacing this one logs nobody out.
        """
        self._heap.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self.shared is not None:
            await self.shared.stop()  # first: an adoption finishing later would be left open
        let_go = self.drop if self.shared is not None else self.end
        await asyncio.gather(
            *(let_go(s) for s in list(self.sessions.values())), return_exceptions=True
        )
        if self.shared is not None:
            await self.shared.close()
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

    async def adopt(self, sid: str | None, address: str) -> BrowserSession:
        """A session this web app does not hold, from the shared table; else NotLoggedIn."""
        if self.shared is None:
            raise NotLoggedIn
        return await self.shared.adopt(sid, address)

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
        if self.shared is not None:
            # Written before the browser gets its cookie: any web app can then serve it.
            try:
                await self.shared.save(sid, name, reply["token"])
            except BaseException:
                self.caps.drop_user(name)
                await client.exit()
                raise
        session = BrowserSession(sid, name, reply["token"], client, self.buffer_events, address)
        # The buffer starts empty at the login's core cursor: the list in the
        # reply is exact at the buffer's head.
        position = session.buffer.head
        self._begin(session, reply["cursor"])
        log.info(
            "browser session of %s started (%d sessions)", session.username, len(self.sessions)
        )
        fields = {"username": name, "users": reply["users"], "rooms": reply.get("rooms", [])}
        return session, {**fields, "cursor": position}

    async def resume_session(self, sid: str, token: str, address: str) -> BrowserSession:
        """Serve here a session another web app logged in: a new core connection, ``resume``.

        Raise :class:`CoreError` (``invalid_token``: the session has ended), or
        CoreUnavailable / Refused as a login would. Never ``exit`` on failure: the
        token is the browser's, still valid elsewhere.
        """
        if self.closing:
            raise CoreUnavailable("this web app is stopping")
        self.caps.reserve(address)
        try:
            client = await self._connect()
            try:
                reply = await client.resume(token)
                self.caps.add_user(reply["username"])
            except BaseException:
                await client.close()
                raise
        except BaseException:
            self.caps.release(address)
            raise
        name = reply["username"]
        session = BrowserSession(sid, name, token, client, self.buffer_events, address)
        self._begin(session, reply["cursor"])
        return session

    def _begin(self, session: BrowserSession, cursor: int) -> None:
        """Serve ``session`` from now on: its poll stream from core cursor ``cursor``."""
        stream = self._stream(session, cursor)
        self.sessions[session.sid] = session
        session.pump = asyncio.create_task(
            self._pump(session, stream), name=f"pump-{session.username}"
        )
        self._heap.started()

    async def end(self, session: BrowserSession, *, forget_row: bool = True) -> None:
        """Log out of the core (``exit`` ends the token) and forget the session.

        With a shared table its row goes too (``forget_row``; not when it is already gone).
        """
        if session.ended:
            return
        await self._stop(session)
        try:
            await session.client.exit()
        except CoreUnavailable:
            # The token outlives us only until the core's 7-day expiry.
            log.info("could not send exit for %s: core unreachable", session.username)
        if forget_row and self.shared is not None:
            await self.shared.forget(session.sid)
        log.info("browser session of %s ended (%d sessions)", session.username, len(self.sessions))

    async def drop(self, session: BrowserSession) -> None:
        """Let go of a session without logging it out (shared table only): its connection
        closes (the user goes offline unless another one holds them), its token and row
        stay, and the browser's next request is served again, here or on another web app."""
        if session.ended:
            return
        session.quiet = True
        await self._stop(session)
        await session.client.close()
        log.info(
            "let go of the browser session of %s (%d sessions)",
            session.username,
            len(self.sessions),
        )

    async def _stop(self, session: BrowserSession) -> None:
        self._forget(session)
        session.buffer.notify()  # held polls answer now (401, or 503 when let go)
        if session.pump is not None:
            session.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.pump
            session.pump = None  # the task's exception would hold the session in a cycle

    def socket_closed(self) -> None:
        """A tab's WebSocket ended: its connection's cycles count towards a full collection."""
        self._heap.released()

    def _forget(self, session: BrowserSession) -> None:
        session.ended = True
        if self.sessions.pop(session.sid, None) is not None:
            self.caps.remove(session.username, session.address)
            self._heap.ended()

    # -- background work ------------------------------------------------------------------
    def _stream(self, session: BrowserSession, cursor: int) -> asyncio.Future[None]:
        """Start the session's poll stream from core cursor ``cursor``."""
        session.poll_replies = 0
        shared = self._encodings.encode

        def on_reply(reply: dict[str, Any]) -> None:
            session.poll_replies += 1
            if reply.get("reset"):
                session.buffer.reset()
            session.buffer.append([shared(e) for e in reply["events"]])

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
                # Shared: only a refused token ends the browser's session everywhere.
                session.quiet = self.shared is not None and exc.code != "invalid_token"
                self._forget(session)
                session.buffer.notify()
                if self.shared is not None and not session.quiet:
                    await self.shared.forget(session.sid)
                return None
            session.client = client
            token = reply.get("token", session.token)
            if token != session.token and self.shared is not None:
                # The shared row must hold the token the core now honours.
                with contextlib.suppress(SessionStoreUnavailable):
                    await self.shared.save(session.sid, session.username, token)
            session.token = token
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
            # Shared: the browser may be polling another web app (a balancer without
            # affinity): only let go of our copy; the session itself stays.
            let_go = self.drop if self.shared is not None else self.end
            for s in idle:
                log.info(
                    "browser session of %s idle here: %s",
                    s.username,
                    "letting go" if self.shared is not None else "logging out",
                )
            if idle:
                await asyncio.gather(*(let_go(s) for s in idle), return_exceptions=True)
