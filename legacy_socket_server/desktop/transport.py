"""One non-blocking framed-TCP connection, advanced by ``pump()``.

No threads and no blocking calls after construction: connect is started with
``connect_ex`` and completed when ``select`` (timeout 0) reports the socket
writable, so a dead server never freezes the window. Frames are cut by the
shared codec (``protocol.FrameDecoder``); nothing here parses them.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from ..protocol import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, ProtocolError, encode

log = logging.getLogger(__name__)

#: A connect that has not completed by then is abandoned (and retried by the model).
CONNECT_TIMEOUT = 5.0
#: Bytes read per pump: bounds the work of one 100 ms tick so a flood of
#: events cannot stall the UI; the rest is read at the next tick.
MAX_READ_PER_PUMP = 4 * 1024 * 1024
_RECV_CHUNK = 256 * 1024


class Connection:
    """A framed connection: ``send`` queues, ``pump`` moves bytes both ways."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self._clock = clock
        self._deadline = clock() + connect_timeout
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
        self._out = bytearray()
        self.state = "connecting"  # -> "open" -> "closed"
        self.error: str | None = None
        self._sock: socket.socket | None = None
        try:
            # Name resolution is the one call that may block; for the usual
            # numeric address or "localhost" it returns at once.
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[
                0
            ]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            self._fail(f"cannot resolve {host}: {exc.strerror or exc}")
            return
        sock.setblocking(False)
        self._sock = sock
        code = sock.connect_ex(addr)
        if code == 0:
            self._opened()
        elif code not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._fail(os.strerror(code))

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def send(self, obj: dict[str, Any]) -> None:
        """Queue one packet; it leaves at the next ``pump`` (or once connected)."""
        if not self.closed:
            self._out += encode(obj)

    def pump(self) -> list[dict[str, Any]]:
        """Finish connecting, flush queued bytes, and return the packets received.

        Packets that arrived before the peer closed are still returned; check
        :attr:`closed` afterwards.
        """
        if self.state == "connecting":
            self._check_connect()
        if self.state != "open":
            return []
        self._flush()
        return self._read() if self.state == "open" else []

    def flush(self) -> None:
        """Write what the socket takes now (never blocks); the rest goes at ``pump``."""
        if self.state == "open":
            self._flush()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        self.state = "closed"

    def close_gracefully(self, final: dict[str, Any], timeout: float = 1.0) -> None:
        """Send ``final`` (e.g. ``exit``), give the server up to ``timeout`` s to
        answer, then close. Used only on quit, when a short wait is acceptable
        and the server must see the request before the socket goes away."""
        if self.state == "open" and self._sock is not None:
            self.send(final)
            try:
                self._sock.settimeout(timeout)
                self._sock.sendall(self._out)
                self._out.clear()
                self._sock.recv(_RECV_CHUNK)  # the reply, or EOF when the server closes
            except OSError:
                pass
        self.close()

    # -- internals ----------------------------------------------------------------
    def _check_connect(self) -> None:
        assert self._sock is not None
        try:
            _, writable, failed = select.select([], [self._sock], [self._sock], 0)
        except (OSError, ValueError) as exc:
            self._fail(str(exc))
            return
        if writable or failed:
            code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(os.strerror(code))
            else:
                self._opened()
        elif self._clock() > self._deadline:
            self._fail("connection timed out")

    def _opened(self) -> None:
        self.state = "open"
        log.info("connected to %s:%d", self.host, self.port)

    def _flush(self) -> None:
        assert self._sock is not None
        while self._out:
            try:
                sent = self._sock.send(self._out[:_RECV_CHUNK])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(exc.strerror or str(exc))
                return
            del self._out[:sent]

    def _read(self) -> list[dict[str, Any]]:
        assert self._sock is not None
        got: list[dict[str, Any]] = []
        budget = MAX_READ_PER_PUMP
        while budget > 0:
            try:
                data = self._sock.recv(_RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fail(exc.strerror or str(exc))
                break
            if not data:
                self._fail("the server closed the connection")
                break
            budget -= len(data)
            for item in self._decoder.feed(data):
                if isinstance(item, ProtocolError):
                    log.warning("unusable packet from the server: %s", item.message)
                    if item.fatal:
                        self._fail(f"protocol error: {item.message}")
                        return got
                else:
                    got.append(item)
        return got

    def _fail(self, reason: str) -> None:
        if self.state != "closed":
            log.info("connection to %s:%d lost: %s", self.host, self.port, reason)
        self.error = reason
        self.close()
