"""``GET /api/ws``: events pushed to a browser tab (docs/protocol.md#websocket-push).

A socket reads the session's event buffer exactly as ``GET /api/poll`` does,
from a cursor, and sends each batch as one text frame shaped like a poll reply
(the buffer's bytes, joined, never re-encoded). What a socket costs is its
handler coroutine, a reader task and aiohttp's per-connection objects: no
request per event, no response object kept per keep-alive connection.

Close codes: 1013 when the tab does not read fast enough (it reconnects with
its cursor and loses nothing: the buffer still holds the events, or says
``reset``), 4401 when the session ends (logout, idle, a refused token), 1012
while the core is unreachable, 1001 when the web app stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSMsgType, web

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
    # An open socket is a poll in progress: the idle reaper leaves the session alone.
    session.polls_in_flight += 1
    session.touch()
    reader = asyncio.create_task(_read(ws, buf), name=f"ws-read-{session.username}")
    loop = asyncio.get_running_loop()
    first = True
    last_sent = loop.time()
    try:
        while not ws.closed and not reader.done():
            if session.ended:
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
            reply = buf.collect(cursor)
            quiet_for = loop.time() - last_sent
            if first or reply.events or reply.reset or quiet_for >= keepalive:
                try:
                    await ws.send_frame(reply.body(), WSMsgType.TEXT)
                except ConnectionError:
                    return
                if not await _drains(ws, transport, max_send_buffer):
                    log.info("closing the socket of %s: it does not read", session.username)
                    await ws.close(code=CLOSE_TOO_SLOW, message=b"too slow", drain=False)
                    return
                cursor, first, last_sent = reply.cursor, False, loop.time()
                if reply.events or reply.reset:
                    continue  # more may be waiting (a reply holds a bounded number)
            await buf.changed(keepalive - (loop.time() - last_sent))
    finally:
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


async def _read(ws: web.WebSocketResponse, buf: EventBuffer) -> None:
    """Take what the tab sends (pings are answered inside ``receive``) until it closes."""
    try:
        async for _ in ws:
            pass  # the contract has the tab send nothing else; ignore it
    finally:
        buf.notify()  # wake the sender: the socket is gone
