"""An asyncio client of the core: connect, log in, send requests, long-poll.

Used by the web gateway, the benchmarks and the tests. Each request gets an
``id`` and its reply is matched by that id, so a held ``poll`` (answered out
of order) never confuses the other replies.

Replies are handled in the order they arrive, which is the order the core
sent them. Two things build on that, for the gateway: a *poll stream*
(:meth:`CoreClient.stream_polls`) hands each poll reply to a callback the
moment it is decoded and sends the next poll at once, so a poll is always
open at the core; and :meth:`CoreClient.request_stamped` records what a
callback says at the moment a reply is decoded (e.g. how many poll replies
came before it), which is how the gateway pairs a user list with its buffer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections.abc import Callable
from typing import Any

from .protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameDecoder,
    ProtocolError,
    encode,
    poll_request_packet,
)
from .tls import ClientTLS, UntrustedCertificate

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
        self._stamps: dict[int, Callable[[], Any]] = {}
        self._stamped: dict[int, Any] = {}
        self._stream: _PollStream | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        tls: ClientTLS | None = None,
    ) -> CoreClient:
        """Connect (over TLS when ``tls`` is given: nothing is sent before the core's
        certificate is verified, and a failed check is :class:`CoreUnavailable`)."""
        loop = asyncio.get_running_loop()
        extra: dict[str, Any] = {}
        if tls is not None:
            extra = {"ssl": tls.context(), "server_hostname": host}
        try:
            transport, proto = await asyncio.wait_for(
                loop.create_connection(lambda: cls(max_bytes), host, port, **extra), timeout
            )
        except (TimeoutError, OSError) as exc:
            raise CoreUnavailable(f"cannot reach the core at {host}:{port}: {exc}") from exc
        if tls is not None:
            try:
                tls.check(transport.get_extra_info("ssl_object"))
            except (UntrustedCertificate, ssl.SSLError) as exc:
                transport.abort()
                raise CoreUnavailable(f"refusing the core at {host}:{port}: {exc}") from exc
        return proto

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._stream is not None:
            self._stream.heard()
        for item in self._decoder.feed(data):
            if isinstance(item, ProtocolError):
                log.warning("core sent an unusable packet: %s", item.message)
                if item.fatal and self._transport is not None:
                    self._transport.close()
                continue
            rid = item.get("id")
            if self._stream is not None and rid == self._stream.rid:
                self._stream.answered(item)
                continue
            stamp = self._stamps.pop(rid, None)  # type: ignore[arg-type]
            if stamp is not None:
                self._stamped[rid] = stamp()  # type: ignore[index]
            fut = self._waiting.pop(rid, None)  # type: ignore[arg-type]
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
        if self._stream is not None:
            self._stream.stop(err)
            self._stream = None  # it points back here: no cycle left for the GC
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
        return await self._send_and_wait(next(self._ids), purpose, timeout, fields)

    async def _send_and_wait(
        self, rid: int, purpose: str, timeout: float | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._write({"purpose": purpose, "id": rid, **fields})
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CoreUnavailable(f"no reply to {purpose!r} within {timeout} s") from None
        finally:
            self._waiting.pop(rid, None)

    async def request_stamped(
        self, purpose: str, stamp: Callable[[], Any], **fields: Any
    ) -> tuple[dict[str, Any], Any]:
        """Like :meth:`request`, with ``stamp()`` as called when the reply was decoded."""
        if not self.is_open:
            raise CoreUnavailable("not connected to the core")
        rid = next(self._ids)
        self._stamps[rid] = stamp
        try:
            return await self._send_and_wait(rid, purpose, 35.0, fields), self._stamped.pop(rid)
        finally:
            self._stamps.pop(rid, None)
            self._stamped.pop(rid, None)

    def stream_polls(
        self,
        cursor: int,
        wait_ms: int,
        on_reply: Callable[[dict[str, Any]], None],
        *,
        stream: bool = False,
    ) -> asyncio.Future[None]:
        """Keep one held ``poll`` open until the connection ends.

        ``on_reply(reply)`` runs as soon as each poll reply is decoded, before
        any later reply is looked at, and the next poll (from the reply's
        cursor) is written before anything else can be. With ``stream`` the
        poll asks the core to stay held after each answer (docs/protocol.md#push-stream):
        no next poll to write, and a core that does not stream is polled again
        as without it. The returned future fails with :class:`CoreUnavailable`
        when the connection is lost (or a reply is overdue) and with
        :class:`CoreError` when the core refuses a poll.
        """
        if not self.is_open:
            raise CoreUnavailable("not connected to the core")
        if self._stream is not None:
            raise RuntimeError("this connection already streams polls")
        self._stream = _PollStream(self, wait_ms, on_reply, stream)
        self._stream.send(cursor)
        return self._stream.done

    def _write(self, obj: dict[str, Any]) -> None:
        self._transport.write(encode(obj))  # type: ignore[union-attr]

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


def _ignore_reply(reply: dict[str, Any]) -> None:
    """A stopped stream's callback."""


class _PollStream:
    """The state of :meth:`CoreClient.stream_polls`: the open poll's id and its deadline."""

    #: A held poll is answered by ``wait_ms``; past that plus this, the
    #: connection is dead even without a FIN.
    GRACE = 10.0
    #: After the deadline, how long the loop gets to read what may have arrived.
    CONFIRM = 0.5

    def __init__(
        self,
        client: CoreClient,
        wait_ms: int,
        on_reply: Callable[[dict[str, Any]], None],
        stream: bool = False,
    ) -> None:
        self.client = client
        self.wait_ms = wait_ms
        self.on_reply = on_reply
        self.stream = stream
        self.rid = -1
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._confirming = False

    def send(self, cursor: int) -> None:
        self.rid = next(self.client._ids)
        self.client._transport.write(  # type: ignore[union-attr]
            poll_request_packet(self.rid, cursor, self.wait_ms, self.stream)
        )
        self._expect_reply()

    def _expect_reply(self) -> None:
        """The next reply is due within ``wait_ms`` (a held poll's end, or a stream's keepalive)."""
        loop = asyncio.get_running_loop()
        # One timer at a time, moved on only when it fires: a poll answered at
        # once (a busy session) then costs no timer of its own.
        self._deadline = loop.time() + self.wait_ms / 1000 + self.GRACE
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._check)

    def heard(self) -> None:
        """Bytes arrived on the connection: it is alive, whatever they answer."""
        self._deadline = max(
            self._deadline, asyncio.get_running_loop().time() + self.wait_ms / 1000 + self.GRACE
        )

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._confirming = False
            self._timer = loop.call_at(self._deadline, self._check)
            return
        if not self._confirming:
            # A busy loop runs due timers before it reads its sockets: a reply
            # may be waiting unread. Judge after one more pass over the sockets.
            self._confirming = True
            self._timer = loop.call_later(self.CONFIRM, self._check)
            return
        self._timer = None
        self._overdue()

    def answered(self, reply: dict[str, Any]) -> None:
        if self.done.done():
            return
        if not reply.get("ok"):
            self.stop(CoreError(reply))
            return
        try:
            self.on_reply(reply)
        except Exception as exc:  # a bug in the callback must not pass silently
            log.exception("poll stream callback failed")
            self.stop(exc)
            return
        if self.stream and reply.get("stream"):
            self._expect_reply()  # the core holds the poll again by itself
        elif self.client.is_open:
            self.send(reply["cursor"])

    def _overdue(self) -> None:
        self.stop(CoreUnavailable(f"no poll reply within {self.wait_ms / 1000 + self.GRACE} s"))
        if self.client._transport is not None:
            self.client._transport.abort()

    def stop(self, exc: BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # The callback usually holds its owner (a gateway session holding this
        # connection): let go of it so the pair is freed without the cyclic GC.
        self.on_reply = _ignore_reply
        if not self.done.done():
            self.done.set_exception(exc)
