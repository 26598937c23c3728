"""``GET /api/ws`` (docs/protocol.md#websocket-push) over a real aiohttp server and a real core."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from waiting import until
from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    TcpUser,
    fixture_make_web,
    fixture_tcp,
    login,
)

Tcp = Callable[[str], Awaitable[TcpUser]]


async def frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    msg = await ws.receive(timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    return json.loads(msg.data)


async def until_event(
    ws: aiohttp.ClientWebSocketResponse, match: Callable[[dict[str, Any]], bool]
) -> tuple[dict[str, Any], int]:
    """Frames until one holds an event that ``match``es: (event, cursor after its frame)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, "no matching event within 10 s"
        body = await frame(ws, left)
        for event in body["events"]:
            if match(event):
                return event, body["cursor"]


def is_message(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == "message" and e["message"]["text"] == text


async def web_client(make_web: MakeWeb, aiohttp_client: Any, **config: Any) -> TestClient:
    return await aiohttp_client(await make_web(**config))


async def test_a_socket_pushes_messages_presence_and_room_messages(
    make_web: MakeWeb, aiohttp_client: Any, tcp: Tcp
) -> None:
    web = await web_client(make_web, aiohttp_client)
    cursor = (await login(web, "Alice"))["cursor"]
    async with web.ws_connect(f"/api/ws?cursor={cursor}") as ws:
        first = await frame(ws, 5)  # at once, even with nothing to say
        assert first == {"cursor": cursor, "events": []}
        bob = await tcp("Bob")  # Bob comes online
        presence, _ = await until_event(
            ws, lambda e: e.get("type") == "presence" and e["username"] == "Bob"
        )
        assert presence["online"] is True
        await bob.client.send_message("Alice", "pushed to you")
        event, _ = await until_event(ws, is_message("pushed to you"))
        assert event["message"]["from"] == "Bob"
        await bob.client.call("send_message", room="general", text="hello @alice")
        event, _ = await until_event(ws, is_message("hello @alice"))
        assert event["message"]["room"] == "general"


async def test_every_tab_has_its_own_socket_and_a_dropped_one_resumes_at_its_cursor(
    make_web: MakeWeb, aiohttp_client: Any, tcp: Tcp
) -> None:
    web = await web_client(make_web, aiohttp_client)
    await login(web, "Alice")
    bob = await tcp("Bob")
    other_tab = await web.ws_connect("/api/ws")
    async with web.ws_connect("/api/ws") as ws:
        cursor = (await frame(ws))["cursor"]
        await frame(other_tab)
    # This tab's socket is gone; three messages arrive meanwhile (the other tab sees them).
    for i in range(3):
        await bob.client.send_message("Alice", f"while away {i}")
    await until_event(other_tab, is_message("while away 2"))
    async with web.ws_connect(f"/api/ws?cursor={cursor}") as ws:
        got: list[str] = []
        while len(got) < 3:
            body = await frame(ws)
            got += [e["message"]["text"] for e in body["events"] if e.get("type") == "message"]
        assert got == ["while away 0", "while away 1", "while away 2"]  # once each, in order
    await other_tab.close()


async def test_no_cookie_or_a_foreign_origin_is_refused_before_any_upgrade(
    make_web: MakeWeb, aiohttp_client: Any
) -> None:
    web = await web_client(make_web, aiohttp_client)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await web.ws_connect("/api/ws")
    assert refused.value.status == 401
    await login(web, "Alice")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await web.ws_connect("/api/ws", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    # The raw answer: JSON with the contract's code, and no 101.
    resp = await web.get(
        "/api/ws",
        headers={
            "Origin": "https://evil.example",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        },
    )
    assert resp.status == 403 and (await resp.json())["error"] == "csrf"
    # This site's own origin is fine.
    origin = str(web.make_url("")).rstrip("/")
    async with web.ws_connect("/api/ws", headers={"Origin": origin}) as ws:
        assert "cursor" in await frame(ws)


async def test_logout_closes_the_socket_with_4401(make_web: MakeWeb, aiohttp_client: Any) -> None:
    web = await web_client(make_web, aiohttp_client)
    await login(web, "Alice")
    async with web.ws_connect("/api/ws") as ws:
        await frame(ws)
        resp = await web.post("/api/logout", json={})
        assert resp.status == 204
        msg = await ws.receive(10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401, (msg.type, msg.data)


async def test_an_open_socket_keeps_the_session_alive_past_the_idle_timeout(
    make_web: MakeWeb, aiohttp_client: Any
) -> None:
    web = await web_client(make_web, aiohttp_client, idle_timeout=0.5)
    await login(web, "Alice")
    async with web.ws_connect("/api/ws") as ws:
        await frame(ws)
        # Proving an absence takes time: four idle timeouts pass with no request but the socket.
        await asyncio.sleep(2)
        assert (await web.get("/api/users")).status == 200
    # Without the socket (and without polls) the session is logged out.
    await until(lambda: _status(web, "/api/users", 401), timeout=10, what="the idle session to end")


async def _status(web: TestClient, path: str, status: int) -> bool:
    return (await web.get(path)).status == status


# -- a tab that never reads -----------------------------------------------------------------
def handshake(port: int, cookie: str) -> socket.socket:
    """A WebSocket opened by hand on a socket with a tiny receive buffer, never read again."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Cookie: chat_session={cookie}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)  # byte by byte: nothing after the headers is consumed
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def close_code(data: bytes) -> int | None:
    """The status code of the close frame in a server's stream of frames, if any."""
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        if opcode == 0x8:
            return struct.unpack("!H", data[i : i + 2])[0]
        i += length
    return None


async def test_a_tab_that_never_reads_is_closed_1013_while_others_keep_up(
    make_web: MakeWeb, aiohttp_client: Any, tcp: Tcp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.ws")
    web = await web_client(make_web, aiohttp_client, ws_send_buffer=32 * 1024)
    await login(web, "Alice")
    cookie = next(c.value for c in web.session.cookie_jar if c.key == "chat_session")
    stuck = await asyncio.to_thread(handshake, web.port, cookie)
    async with web.ws_connect("/api/ws") as ws:
        await frame(ws)
        bob = await tcp("Bob")
        # 4.8 MB for Alice (480 messages near the longest): more than the stuck tab's
        # socket buffers hold (Linux's largest send buffer is 4 MiB, its receive one 4 KiB).
        text = "x" * 9_990
        for i in range(480):
            await bob.client.send_message("Alice", f"{i:03d} {text}")
        seen = 0
        while seen < 480:  # the reading tab gets every one
            body = await frame(ws)
            seen += sum(1 for e in body["events"] if e.get("type") == "message")
        assert seen == 480
    # Reading would make it a reader again: first the server gives up on it (5 s stuck)...
    await until(lambda: "does not read" in caplog.text, timeout=30, what="the stuck tab cut")

    def drained() -> bytes:
        stuck.settimeout(10)
        data = b""
        while chunk := stuck.recv(1 << 16):
            data += chunk
        return data

    data = await asyncio.to_thread(drained)  # ...then what it queued, ending in its close frame
    stuck.close()
    assert close_code(data) == 1013


async def test_a_quiet_socket_still_gets_a_frame_every_keepalive(
    make_web: MakeWeb, aiohttp_client: Any
) -> None:
    # Pages cannot see WebSocket pings: an empty frame now and then lets them tell a
    # quiet socket from a dead one.
    web = await web_client(make_web, aiohttp_client, ws_keepalive=0.3)
    cursor = (await login(web, "Alice"))["cursor"]
    async with web.ws_connect(f"/api/ws?cursor={cursor}") as ws:
        frames = [await frame(ws, 5) for _ in range(3)]
    assert frames == [{"cursor": cursor, "events": []}] * 3
