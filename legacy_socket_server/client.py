"""An asyncio client of the core: connect, log in, send requests, long-poll.

Used by the web gateway, the benchmarks and the tests. Each request gets an
``id`` and its reply is matched by that id, so a held ``poll`` (answered out
of order) never confuses the other replies.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from .protocol import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, ProtocolError, encode

log = logging.getLogger(__name__)


class CoreError(Exception):
    """A reply with ``ok: false``; ``code`` is the protocol's error code."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.code: str = reply.get("error", "unknown")
        self.message: str = reply.get("message", "")
        super().__init__(f"{self.code}: {self.message}")


class CoreUnavailable(ConnectionError):
    """The core cannot be reached or the connection was lost."""


class CoreClient(asyncio.Protocol):
    """One framed-TCP connection to the core.

    Create with :meth:`connect`. :meth:`request` returns the reply dict
    (``ok`` true or false); :meth:`call` returns it only when ok and raises
    :class:`CoreError` otherwise. When the connection is lost every waiting
    request fails with :class:`CoreUnavailable`.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._decoder = FrameDecoder(max_bytes)
        self._transport: asyncio.Transport | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Unsolicited packets (e.g. ``server_busy`` on connect) land here.
        self.unsolicited: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> CoreClient:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: cls(max_bytes), host, port), timeout
            )
        except (TimeoutError, OSError) as exc:
            raise CoreUnavailable(f"cannot reach the core at {host}:{port}: {exc}") from exc
        return proto

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, ProtocolError):
                log.warning("core sent an unusable packet: %s", item.message)
                if item.fatal and self._transport is not None:
                    self._transport.close()
                continue
            fut = self._waiting.pop(item.get("id"), None)  # type: ignore[arg-type]
            if fut is None:
                self.unsolicited.append(item)
                if item.get("error") == "server_busy" and self._transport is not None:
                    self._transport.close()
            elif not fut.done():
                fut.set_result(item)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        err = CoreUnavailable("connection to the core was lost")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    # -- requests ---------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def request(
        self, purpose: str, timeout: float | None = 35.0, **fields: Any
    ) -> dict[str, Any]:
        """Send one request and wait for its reply (whatever its ``ok``)."""
        if not self.is_open:
            raise CoreUnavailable("not connected to the core")
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._transport.write(encode({"purpose": purpose, "id": rid, **fields}))  # type: ignore[union-attr]
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CoreUnavailable(f"no reply to {purpose!r} within {timeout} s") from None
        finally:
            self._waiting.pop(rid, None)

    async def call(self, purpose: str, **fields: Any) -> dict[str, Any]:
        """Like :meth:`request` but raise :class:`CoreError` unless ``ok``."""
        reply = await self.request(purpose, **fields)
        if not reply.get("ok"):
            raise CoreError(reply)
        return reply

    async def login(self, username: str, password: str) -> dict[str, Any]:
        return await self.call("login", username=username, password=password)

    async def resume(self, token: str) -> dict[str, Any]:
        return await self.call("resume", token=token)

    async def poll(self, cursor: int | None = None, wait_ms: int = 0) -> dict[str, Any]:
        fields: dict[str, Any] = {"wait_ms": wait_ms}
        if cursor is not None:
            fields["cursor"] = cursor
        return await self.call("poll", timeout=wait_ms / 1000 + 10, **fields)

    async def send_message(
        self, to: str, text: str, client_msg_id: str | None = None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"to": to, "text": text}
        if client_msg_id is not None:
            fields["client_msg_id"] = client_msg_id
        return (await self.call("send_message", **fields))["message"]

    async def close(self) -> None:
        """Close without ``exit`` (the session's token stays valid)."""
        if self._transport is not None:
            self._transport.close()
        await self.closed

    async def exit(self) -> None:
        """Send ``exit`` (ends the token) and wait for the server to close."""
        if self.is_open:
            try:
                await self.request("exit", timeout=5)
            except CoreUnavailable:
                pass
        await self.close()
