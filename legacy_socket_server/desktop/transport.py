"""One non-blocking framed-TCP connection, optionally TLS, advanced by ``pump()``.

No threads and no blocking calls after construction: connect is started with
``connect_ex`` and completed when ``select`` (timeout 0) reports the socket
writable, so a dead server never freezes the window. Frames are cut by the
shared codec (``protocol.FrameDecoder``); nothing here parses them.

TLS runs in memory (``ssl.MemoryBIO`` + ``SSLObject``): the socket only ever
carries bytes we already hold, so nothing decrypted can hide from ``select``
inside an SSL socket, and each pump moves what is there and returns. After the
handshake the connection waits in ``secured`` until the caller has checked
the certificate and calls :meth:`Connection.trust`; queued requests (a login
with its password) are encrypted and sent only then.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from ..protocol import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, ProtocolError, encode
from ..tls import peer_fingerprint

log = logging.getLogger(__name__)

#: A connect (with its TLS handshake) that has not completed by then is abandoned
#: (and retried by the model).
CONNECT_TIMEOUT = 5.0
#: Bytes read per pump: bounds the work of one 100 ms tick so a flood of
#: events cannot stall the UI; the rest is read at the next tick.
MAX_READ_PER_PUMP = 4 * 1024 * 1024
_RECV_CHUNK = 256 * 1024


class Connection:
    """A framed connection: ``send`` queues, ``pump`` moves bytes both ways.

    ``state``: ``connecting`` -> (with TLS: ``handshaking`` -> ``secured``) ->
    ``open`` -> ``closed``. ``error`` says why it closed; ``cert_error`` is set
    when the TLS handshake failed because the certificate was not trusted.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self._clock = clock
        # One deadline for connect and handshake: a server that accepts but never
        # answers the handshake fails like one that never accepts.
        self._deadline = clock() + connect_timeout
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME_BYTES)
        self._out = bytearray()  # queued packets, plaintext
        self._tls_context = tls
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # Bytes for the socket: the queue itself without TLS, ciphertext with it.
        self._wire = self._out if tls is None else bytearray()
        self.state = "connecting"
        self.error: str | None = None
        self.cert_error: str | None = None
        self.tls_version: str | None = None
        self.fingerprint: str | None = None
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
            self._connected()
        elif code not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._fail(os.strerror(code))

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def secured(self) -> bool:
        """The TLS handshake is done and the certificate awaits the caller's check."""
        return self.state == "secured"

    def send(self, obj: dict[str, Any]) -> None:
        """Queue one packet; it leaves at the next ``pump`` once the connection is open."""
        if not self.closed:
            self._out += encode(obj)

    def trust(self) -> None:
        """The caller checked the certificate: queued packets may now leave."""
        if self.state == "secured":
            self.state = "open"
            log.info("connected to %s:%d with %s", self.host, self.port, self.tls_version)

    def pump(self) -> list[dict[str, Any]]:
        """Finish connecting, flush queued bytes, and return the packets received.

        Packets that arrived before the peer closed are still returned; check
        :attr:`closed` afterwards.
        """
        if self.state == "connecting":
            self._check_connect()
        if self.state == "handshaking":
            self._handshake()
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
                self._encrypt()
                self._sock.settimeout(timeout)
                self._sock.sendall(self._wire)
                self._wire.clear()
                self._sock.recv(_RECV_CHUNK)  # the reply, or EOF when the server closes
            except (OSError, ssl.SSLError):
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
                self._connected()
        elif self._clock() > self._deadline:
            self._fail("connection timed out")

    def _connected(self) -> None:
        if self._tls_context is None:
            self.state = "open"
            log.info("connected to %s:%d", self.host, self.port)
            return
        try:
            self._tls = self._tls_context.wrap_bio(
                self._incoming, self._outgoing, server_hostname=self.host
            )
        except (ssl.SSLError, ValueError) as exc:
            self._fail(f"TLS setup failed: {exc}")
            return
        self.state = "handshaking"

    def _handshake(self) -> None:
        assert self._tls is not None
        ended = self._receive()
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            if ended:
                self._fail(f"{ended} during the TLS handshake")
                return
            self._send_wire()  # our next handshake message, if there is one
            if not self.closed and self._clock() > self._deadline:
                self._fail("connection timed out (no TLS handshake)")
            return
        except ssl.SSLCertVerificationError as exc:
            self._send_wire()  # the alert tells the server why
            self.cert_error = exc.verify_message or str(exc.reason or exc)
            self._fail(f"certificate not trusted: {self.cert_error}")
            return
        except ssl.SSLError as exc:
            self._fail(f"TLS handshake failed ({exc.reason or exc}); is this the TLS port?")
            return
        self._send_wire()
        self.tls_version = self._tls.version()
        try:
            self.fingerprint = peer_fingerprint(self._tls)
        except ssl.SSLError as exc:
            self._fail(str(exc))
            return
        self.state = "secured"

    def _receive(self) -> str | None:
        """Move the bytes the socket holds into the TLS engine; at the end of the
        stream, say why it ended (the caller first uses what arrived before)."""
        assert self._sock is not None
        budget = MAX_READ_PER_PUMP
        while budget > 0:
            try:
                data = self._sock.recv(_RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                return exc.strerror or str(exc)
            if not data:
                return "the server closed the connection"
            self._incoming.write(data)
            budget -= len(data)
        return None

    def _encrypt(self) -> None:
        """Turn queued packets into TLS records on the wire buffer (no-op without TLS)."""
        if self._tls is not None and self._out:
            self._tls.write(self._out)
            self._out.clear()
        if self._tls is not None:
            self._wire += self._outgoing.read()

    def _flush(self) -> None:
        try:
            self._encrypt()
        except ssl.SSLError as exc:
            self._fail(f"TLS error: {exc.reason or exc}")
            return
        self._send_wire()

    def _send_wire(self) -> None:
        assert self._sock is not None
        if self._tls is not None:
            self._wire += self._outgoing.read()
        while self._wire:
            try:
                sent = self._sock.send(self._wire[:_RECV_CHUNK])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(exc.strerror or str(exc))
                return
            del self._wire[:sent]

    def _read(self) -> list[dict[str, Any]]:
        if self._tls is None:
            return self._read_plain()
        ended = self._receive()
        chunks: list[bytes] = []
        try:
            while True:
                data = self._tls.read(_RECV_CHUNK)
                if not data:  # the server said close_notify
                    ended = ended or "the server closed the connection"
                    break
                chunks.append(data)
        except ssl.SSLWantReadError:
            pass  # all complete records read; a partial one waits for its rest
        except ssl.SSLZeroReturnError:
            ended = ended or "the server closed the connection"
        except ssl.SSLError as exc:
            ended = f"TLS error: {exc.reason or exc}"
        if not ended:
            self._send_wire()  # TLS may answer (e.g. a key update)
        got = self._decode(b"".join(chunks)) if chunks else []
        if ended and not self.closed:
            self._fail(ended)
        return got

    def _read_plain(self) -> list[dict[str, Any]]:
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
            got += self._decode(data)
            if self.closed:
                break
        return got

    def _decode(self, data: bytes) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
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
