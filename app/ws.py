"""``GET /api/ws``: events pushed to a browser tab (docs/protocol.md#websocket-push).

A socket reads the session's event buffer exactly as ``GET /api/poll`` does,
from a cursor, and sends each batch as one text frame shaped like a poll reply
(the buffer's bytes, joined, never re-encoded). What a socket costs is its
handler coroutine, a reader task and aiohttp's per-connection objects: no
request per event, no response object kept per keep-alive connection.

Close codes: 1013 when the tab does not read fast enough (it reconnects with
its cursor and loses nothing: the buffer still holds the events, or says
``reset``), 4401 when the session ends (logout, idle, a refused token), 1012
while the core is unreachable or when this web app lets go of a session that
stays logged in (a shared session table: the tab reconnects and is served
again), 1001 when the web app stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

from aiohttp import web

from .buffer import EventBuffer
from .gateway import BrowserSession, Gateway

log = logging.getLogger(__name__)

#: Ping every 20 s; a pong missing for 10 s more closes the socket, so a dead
#: one (a laptop that left the network) is noticed within 30 s.
HEARTBEAT = 20.0
#: A tab sends nothing but pings and the close handshake.
MAX_INCOMING = 4096
#: How long a close waits for the tab's answer before the connection is dropped.
CLOSE_TIMEOUT = 2.0
#: Bytes queued for one socket that, if they do not drain within SLOW_AFTER
#: seconds, close it with 1013 (about a thousand average events: far more than
#: a tab that reads ever falls behind).
MAX_SEND_BUFFER = 1 << 20
SLOW_AFTER = 5.0
#: How often a backlogged socket's queue is looked at (only while it is over the bound).
DRAIN_CHECK = 0.05
#: A frame at least this often, even an empty one: a page cannot see WebSocket pings,
#: so it takes 60 s of silence for a dead socket (docs/protocol.md#push-choices).
KEEPALIVE = 25.0

CLOSE_GOING_AWAY = 1001
CLOSE_CORE_AWAY = 1012
CLOSE_TOO_SLOW = 1013
CLOSE_LOGGED_OUT = 4401


def open_socket(max_send_buffer: int = MAX_SEND_BUFFER) -> web.WebSocketResponse:
    return web.WebSocketResponse(
        heartbeat=HEARTBEAT,
        timeout=CLOSE_TIMEOUT,
        max_msg_size=MAX_INCOMING,
        compress=False,  # per-message deflate costs more CPU than small JSON frames save
        # aiohttp would make a send wait for the peer to read past this many bytes; we bound
        # the queue ourselves (1013), so a slow tab never holds its sender in a wait.
        writer_limit=max_send_buffer + (1 << 20),
    )


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame as a server sends it (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        return _LEN1(0x81, n) + payload
    if n < 1 << 16:
        return _LEN2(0x81, 126, n) + payload
    return _LEN3(0x81, 127, n) + payload


_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack


class _Socket:
    """One tab's socket as its session's buffer sees it.

    While the socket is caught up and its queue is short, :meth:`deliver` runs
    inside the buffer's append and writes the frame at once: a room message to
    N browser sessions costs N writes, not N task wake-ups and timers. Anything
    else (a backlog, a reset, the session's end, the keepalive) wakes the
    socket's own coroutine, :func:`push`.
    """

    __slots__ = ("ws", "transport", "buf", "cursor", "bound", "last_sent", "busy", "_wake")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        buf: EventBuffer,
        cursor: int | None,
        bound: int,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.buf = buf
        self.cursor = cursor
        self.bound = bound
        self.last_sent = 0.0
        #: The coroutine is sending or draining itself: deliveries wait for it.
        self.busy = True
        self._wake: asyncio.Future[None] | None = None

    def send(self, loop: asyncio.AbstractEventLoop, *, empty: bool = False) -> bool:
        """Write the frames due from the cursor (one even if empty, with ``empty``); any sent?"""
        sent = False
        while not self.transport.is_closing():
            reply = self.buf.collect(self.cursor)
            if not (reply.events or reply.reset or empty):
                break
            self.transport.write(text_frame(reply.body()))
            self.cursor, self.last_sent, sent, empty = reply.cursor, loop.time(), True, False
        return sent

    def deliver(self) -> None:
        if self.busy or self.ws.closed or self.transport.is_closing():
            self.wake()
            return
        self.send(asyncio.get_running_loop())
        if self.transport.get_write_buffer_size() > self.bound:
            self.wake()  # the coroutine decides whether the tab is too slow

    def wake(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until :meth:`wake` or ``timeout`` s; deliveries go on meanwhile."""
        self._wake = asyncio.get_running_loop().create_future()
        self.busy = False
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await self._wake
        except TimeoutError:
            pass
        finally:
            self.busy, self._wake = True, None


async def push(
    gateway: Gateway,
    session: BrowserSession,
    ws: web.WebSocketResponse,
    transport: asyncio.Transport,
    cursor: int | None,
    max_send_buffer: int = MAX_SEND_BUFFER,
    keepalive: float = KEEPALIVE,
) -> None:
    """Send the session's events from ``cursor`` until the socket or the session ends."""
    buf = session.buffer
    sock = _Socket(ws, transport, buf, cursor, max_send_buffer)
    # An open socket is a poll in progress: the idle reaper leaves the session alone.
    session.polls_in_flight += 1
    session.touch()
    reader = asyncio.create_task(_read(ws, sock), name=f"ws-read-{session.username}")
    buf.subscribe(sock)
    loop = asyncio.get_running_loop()
    try:
        # The first frame at once: the tab learns its cursor (or that it must reload).
        sock.send(loop, empty=True)
        while not ws.closed and not reader.done():
            if session.ended:
                if session.quiet:  # let go, not logged out: the tab reconnects and is served
                    await ws.close(code=CLOSE_CORE_AWAY, message=b"session moved")
                else:
                    await ws.close(code=CLOSE_LOGGED_OUT, message=b"logged out")
                return
            if gateway.closing:
                await ws.close(code=CLOSE_GOING_AWAY, message=b"server stopping")
                return
            if not session.connected:
                # The core is away: the tab shows it is reconnecting and comes back with
                # its cursor once the session has resumed (the buffer then says reset).
                await ws.close(code=CLOSE_CORE_AWAY, message=b"core unavailable")
                return
            if transport.is_closing():
                return
            if not await _drains(ws, transport, max_send_buffer):
                log.info("closing the socket of %s: it does not read", session.username)
                await ws.close(code=CLOSE_TOO_SLOW, message=b"too slow", drain=False)
                return
            if not sock.send(loop) and loop.time() - sock.last_sent >= keepalive:
                sock.send(loop, empty=True)  # a quiet while: an empty frame keeps the tab sure
            await sock.wait(keepalive - (loop.time() - sock.last_sent))
    finally:
        buf.unsubscribe(sock)
        gateway.socket_closed()
        session.polls_in_flight -= 1
        session.touch()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _drains(ws: web.WebSocketResponse, transport: asyncio.Transport, bound: int) -> bool:
    """False if more than ``bound`` bytes stay queued for ``SLOW_AFTER`` s: a tab not reading.

    A big frame (a tab that comes back far behind) may sit over the bound for a
    moment on a slow network; only one that does not go down is too slow.
    """
    if transport.get_write_buffer_size() <= bound:
        return True
    deadline = asyncio.get_running_loop().time() + SLOW_AFTER
    while transport.get_write_buffer_size() > bound // 2 and not ws.closed:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(DRAIN_CHECK)
    return True


async def _read(ws: web.WebSocketResponse, sock: _Socket) -> None:
    """Take what the tab sends (pings are answered inside ``receive``) until it closes."""
    try:
        async for _ in ws:
            pass  # the contract has the tab send nothing else; ignore it
    finally:
        sock.wake()  # the socket is gone: its coroutine ends
