"""A lean HTTP/1.1 keep-alive client for the load generator.

aiohttp's client costs ~150 µs of CPU per request; on a 2-core machine shared
with the servers it measures, the generator then takes more CPU than the web
app. Browsers are not Python, so the generator should be as cheap as it can
be: this client speaks just what the chat's JSON API needs (one request at a
time per connection, ``Content-Length`` bodies, one session cookie) in a few
microseconds of Python per request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class HttpError(Exception):
    pass


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end])
        length = 0
        lower = head.lower()
        i = lower.find(b"\r\ncontent-length:")
        if i >= 0:
            j = lower.find(b"\r\n", i + 2)
            length = int(head[i + 17 : j if j >= 0 else None])
        elif b"\r\ntransfer-encoding:" in lower:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(HttpError("the bench client reads no chunked replies"))
            return
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        status = int(head[9:12])
        waiter, self.waiter = self.waiter, None  # keep no reference to a big body
        if waiter is not None and not waiter.done():
            waiter.set_result((status, head, body))

    async def request(self, data: bytes) -> tuple[int, bytes, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


class Browser:
    """One browser: a session cookie and keep-alive connections (poll and send apart)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.cookie = b""
        self._conns: dict[str, _Conn] = {}

    async def _conn(self, lane: str) -> _Conn:
        c = self._conns.get(lane)
        if c is None or c.closed:
            _, c = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
            self._conns[lane] = c
        return c

    async def request(
        self, method: str, path: str, body: Any = None, lane: str = "main"
    ) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Length: {len(payload)}\r\n"
        ).encode()
        if body is not None:
            head += b"Content-Type: application/json\r\n"
        if self.cookie:
            head += b"Cookie: " + self.cookie + b"\r\n"
        conn = await self._conn(lane)
        status, resp_head, resp_body = await conn.request(head + b"\r\n" + payload)
        i = resp_head.lower().find(b"\r\nset-cookie:")
        if i >= 0:
            value = resp_head[i + 13 :].split(b"\r\n", 1)[0].strip()
            self.cookie = value.split(b";", 1)[0]
        return status, resp_body

    async def close(self) -> None:
        for c in self._conns.values():
            if c.transport is not None:
                c.transport.close()
        self._conns.clear()
