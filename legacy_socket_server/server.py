"""The TCP server: a thin asyncio adapter between sockets and ``ChatService``.

One thread, one event loop. Each connection owns a :class:`FrameDecoder` and
a :class:`Session`; every complete packet goes to ``ChatService.handle`` and
the reply is written back in request order (a held ``poll`` answers when it
ends). One connection's bad input, slowness or crash never touches another.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import native
from .addresses import IPNetwork, client_address, is_trusted, parse_networks
from .chat import MAX_SESSIONS_PER_USER, ChatService, Session
from .datadir import prepare as prepare_data_dir
from .heap import Heap
from .limits import SEND_BURST, SEND_RATE
from .pg_accounts import PgTokenStore, PgUserStore
from .protocol import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, ProtocolError, encode
from .settings import DEFAULT_DATA_DIR
from .storage_files import StorageUnavailable, StoreError
from .storage_pg import PgHistoryStore
from .store import MIN_COMPACT_BYTES, HistoryStore
from .tls import (
    CertificateReloader,
    TLSListener,
    ensure_certificate,
    server_context,
)
from .tokens import TokenStore
from .users import USERS_FILE, UserStore

log = logging.getLogger("legacy_socket_server")

#: A packet left incomplete this long is a stalled or hostile peer.
PARTIAL_TIMEOUT = 30.0
#: Replies queued for a peer that does not read; past this it is dropped
#: rather than letting it hold our memory (several full-size frames fit).
MAX_OUTPUT_BUFFER = 8 * 1024 * 1024
#: Enough for thousands of desktop clients and browser sessions, and far
#: below what the file-descriptor limit is raised to.
DEFAULT_MAX_CONNECTIONS = 10_000
#: Requests held behind a login that waits for the hash gate; past this the
#: connection stops being read until the login is decided.
MAX_BACKLOG = 64
#: A connection that has not logged in (or resumed) by then is closed with
#: ``login_timeout``: a person types a password in far less, and sockets that
#: never speak must not hold slots (docs/protocol.md#limits-per-client).
LOGIN_TIMEOUT = 30.0
#: Connections one client address may hold (trusted addresses are exempt): a
#: household or a small office behind one NAT, not a laptop holding every slot.
MAX_CONNECTIONS_PER_IP = 32
#: A connection's output of one loop turn is written at once past this many bytes.
MAX_TURN_OUTPUT = 64 * 1024
#: The web gateway on this machine; a deployment adds its gateway's address.
TRUSTED_CLIENTS = "127.0.0.1,::1"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5050
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_DIR)
    fsync: str = "everysec"
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    partial_timeout: float = PARTIAL_TIMEOUT
    max_output_buffer: int = MAX_OUTPUT_BUFFER
    min_compact_bytes: int = MIN_COMPACT_BYTES
    demo_users: bool = True
    send_burst: float = SEND_BURST
    send_rate: float = SEND_RATE
    login_timeout: float = LOGIN_TIMEOUT
    max_connections_per_ip: int = MAX_CONNECTIONS_PER_IP
    trusted_clients: tuple[IPNetwork, ...] = field(
        default_factory=lambda: parse_networks(TRUSTED_CLIENTS)
    )
    max_sessions_per_user: int = MAX_SESSIONS_PER_USER
    #: A second listener with TLS (docs/protocol.md#tls); None: off.
    tls: TLSListener | None = None
    #: Keep the history in this PostgreSQL database instead of the data dir's files.
    database_url: str | None = None


#: Closed connections (or as many as are open, if more) before a full collection.
CORE_THAW_CHURN = 1024


def _gone(reply: dict[str, Any]) -> None:
    """Where a closed connection's session sends: nowhere (it has no peer left)."""


class Connection(asyncio.Protocol):
    def __init__(self, server: CoreServer) -> None:
        self.server = server
        self.service = server.service
        self.decoder = FrameDecoder(server.config.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._pending: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._partial_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._backlog: list[dict[str, Any] | ProtocolError] | None = None
        self._login_timer: asyncio.TimerHandle | None = None
        #: The address counted against the per-address cap (None: not counted).
        self._counted: str | None = None
        #: The peer half-closed while requests waited (see ``eof_received``).
        self._eof = False
        #: Packets made for this peer in this loop turn, not yet written (see ``_write_packet``).
        self._out: list[bytes] | None = None
        self._out_bytes = 0

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        config = self.server.config
        peer = transport.get_extra_info("peername")
        client = client_address(peer)
        trusted = is_trusted(client, config.trusted_clients)
        if len(self.server.connections) >= config.max_connections:
            log.warning("refusing %s: at the %d-connection limit", peer, config.max_connections)
            self._refuse("the server is at its connection limit; try again later")
            return
        if not trusted:
            held = self.server.per_address.get(client, 0)
            if held >= config.max_connections_per_ip:
                log.warning("refusing %s: %s holds %d connections", peer, client, held)
                self._refuse(
                    f"your address already has {held} connections open, the most allowed; "
                    "close one and try again"
                )
                return
            self.server.per_address[client] = held + 1
            self._counted = client
        self.server.connections.add(self)
        self.server.heap.started()
        self.session = Session(
            self._send_now,
            peer=f"{peer[0]}:{peer[1]}" if peer else "",
            client=client,
            trusted=trusted,
            send_packet=self._write_packet,
        )
        self._login_timer = asyncio.get_running_loop().call_later(
            config.login_timeout, self._login_expired
        )

    def _refuse(self, message: str) -> None:
        self._write({"purpose": "error", "ok": False, "error": "server_busy", "message": message})
        self.send_out()
        self._closing = True
        assert self.transport is not None
        self.transport.close()

    def _login_expired(self) -> None:
        self._login_timer = None
        if self.session is None or self.session.username is not None or self._closing:
            return
        if self._backlog is not None:
            # Its login waits in the hash gate: our queue, not the client, is late.
            # The gate answers it within a bounded time; the deadline then no longer matters.
            return
        secs = self.server.config.login_timeout
        log.info("closing %s: not logged in after %g s", self.session.peer, secs)
        self._deliver(
            {
                "purpose": "error",
                "ok": False,
                "error": "login_timeout",
                "message": f"not logged in within {secs:g} s; closing",
            }
        )
        self._close_after_flush()

    def data_received(self, data: bytes) -> None:
        if self._closing or self.session is None:
            return
        items = self.decoder.feed(data)
        if self._backlog is not None:  # a login is waiting for the hash gate
            self._backlog.extend(items)
            if len(self._backlog) > MAX_BACKLOG and self.transport is not None:
                self.transport.pause_reading()
        else:
            self._process(items)
        if self._partial_timer is not None or self.decoder.pending:
            self._watch_partial(completed=bool(items))

    def _process(self, items: list[dict[str, Any] | ProtocolError]) -> None:
        session = self.session
        assert session is not None
        handle = self.service.handle
        for i, item in enumerate(items):
            if isinstance(item, ProtocolError):
                self._deliver(item.to_reply())
                if item.fatal:
                    log.info("closing %s: %s", session.peer, item.message)
                    self._close_after_flush()
                    return
                continue
            try:
                result = handle(session, item)
            except Exception:
                log.exception("error handling %r from %s", item.get("purpose"), session.peer)
                result = {
                    "purpose": item.get("purpose"),
                    "ok": False,
                    "error": "internal_error",
                    "message": "the server failed on this request; it was not applied",
                }
            if result is not None:
                self._deliver(result)
            if session.closed:  # exit: reply, then close
                self._close_after_flush()
                return
            if isinstance(result, asyncio.Future) and (
                item["purpose"] == "login" or self.service.commit_first
            ):
                # Later requests may depend on this one (being logged in; with a
                # commit-first store, seeing its write): hold them until it is
                # decided. Reading goes on (so a hang-up is noticed and the waiting
                # check is dropped unhashed) until the held ones are many.
                self._backlog = list(items[i + 1 :])
                result.add_done_callback(self._login_decided)
                return

    def eof_received(self) -> bool | None:
        # The peer has sent all it will (a TLS close_notify, a shutdown of its side):
        # the transport closes after this, so what this turn made for it goes now.
        self.send_out()
        session = self.session
        if (
            session is not None
            and session.username is not None
            and (self._pending or self._backlog is not None)
            and self.transport is not None
            and self.transport.get_extra_info("sslcontext") is None
        ):
            # Requests read but not yet answered (a write waiting for its commit or its
            # fsync, and those behind it): over plain TCP the write side stays open until
            # they are (TLS cannot half-close). A login still waiting for the hash gate
            # is a hang-up as before: dropped unhashed.
            self._eof = True
            return True
        return None

    def _login_decided(self, _: object) -> None:
        backlog, self._backlog = self._backlog or [], None
        if self.transport is None or self._closing:
            return
        if not self._eof:
            self.transport.resume_reading()
        self._process(backlog)
        self._flush()  # after the peer's EOF: closes once the last reply is out

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.connections:
            self.server.connections.remove(self)
            self.server.heap.ended()
        if self._counted is not None:
            left = self.server.per_address[self._counted] - 1
            if left:
                self.server.per_address[self._counted] = left
            else:
                del self.server.per_address[self._counted]
            self._counted = None
        if self._login_timer is not None:
            self._login_timer.cancel()
            self._login_timer = None
        if self._partial_timer is not None:
            self._partial_timer.cancel()
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._out = None
        if self.session is not None:
            self.service.disconnect(self.session)
            # The session's callbacks are this connection's bound methods: a cycle the
            # cyclic GC would have to find, which it does not while the heap is frozen
            # (legacy_socket_server/heap.py). Reference counting frees both now.
            self.session.send = _gone
            self.session.send_packet = None
        self.transport = None

    # -- writing, in request order ------------------------------------------------------
    def _deliver(self, result: dict[str, Any] | asyncio.Future[dict[str, Any]]) -> None:
        if isinstance(result, dict):
            if not self._pending:
                self._write(result)
                return
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            fut.set_result(result)
            result = fut
        self._pending.append(result)
        result.add_done_callback(self._flush)

    def _flush(self, _: object = None) -> None:
        while self._pending and self._pending[0].done():
            fut = self._pending.popleft()
            if not fut.cancelled():
                self._write(fut.result())
        done = self._closing or (self._eof and self._backlog is None)
        if done and not self._pending and self.transport is not None:
            self.send_out()
            self.transport.close()

    def _send_now(self, reply: dict[str, Any]) -> None:
        # Held polls are answered when they end, out of request order
        # (docs/protocol.md#requests-and-replies).
        self._write(reply)

    def _write(self, reply: dict[str, Any]) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        try:
            data = encode(reply, self.server.config.max_frame_bytes)
        except ValueError as exc:
            log.error("reply to %s not sendable: %s", reply.get("purpose"), exc)
            data = encode(
                {
                    "purpose": reply.get("purpose"),
                    "id": reply.get("id"),
                    "ok": False,
                    "error": "internal_error",
                    "message": "the reply could not be encoded",
                }
            )
        self._write_packet(data)

    def _write_packet(self, data: bytes) -> None:
        # Gathered and written once at the end of the loop turn: replies, the
        # events of a held poll and a send's ack made in one turn share one
        # syscall, a third of the core's time per message (docs/performance.md#core-efficiency).
        out = self._out
        if out is None:
            if self.transport is None:
                return
            self._out = [data]
            self._out_bytes = len(data)
            self.server.flush_later(self)
            return
        out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes > MAX_TURN_OUTPUT:
            self.send_out()  # a history page or a flood: out now, under the bound below

    def send_out(self) -> None:
        """Write what this turn made for the peer (called at the end of the turn)."""
        out, self._out = self._out, None
        t = self.transport
        if not out or t is None or t.is_closing():
            return
        t.write(out[0] if len(out) == 1 else b"".join(out))
        if t.get_write_buffer_size() > self.server.config.max_output_buffer:
            log.warning(
                "dropping %s: it does not read its replies",
                self.session.peer if self.session else "?",
            )
            t.abort()

    def _close_after_flush(self) -> None:
        self.send_out()
        self._closing = True
        if not self._pending and self.transport is not None:
            self.transport.close()

    def _watch_partial(self, completed: bool) -> None:
        # The clock runs from the start of the packet now pending: a packet
        # that completed restarts it, so a busy stream whose reads always end
        # mid-packet is not mistaken for a stalled one.
        if completed and self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None
        if self.decoder.pending and self._partial_timer is None:
            self._partial_timer = asyncio.get_running_loop().call_later(
                self.server.config.partial_timeout, self._partial_expired
            )
        elif not self.decoder.pending and self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None

    def _partial_expired(self) -> None:
        self._partial_timer = None
        secs = self.server.config.partial_timeout
        self._deliver(
            {
                "purpose": "error",
                "ok": False,
                "error": "bad_frame",
                "message": f"incomplete packet for {secs:g} s; closing",
            }
        )
        self._close_after_flush()


class CoreServer:
    """The running core: ``await CoreServer.start(config)``, then ``await stop()``."""

    def __init__(self, config: ServerConfig, history: PgHistoryStore | None = None) -> None:
        self.config = config
        data_dir = prepare_data_dir(Path(config.data_dir))
        self.pg = history
        files = HistoryStore(
            data_dir, fsync=config.fsync, min_compact_bytes=config.min_compact_bytes
        )
        #: With the history in PostgreSQL the directory still holds users and tokens:
        #: it is taken all the same, so no second core or CLI writes to it meanwhile.
        self._dir_lock: HistoryStore | None = None
        if history is not None:
            files.lock(moved_ok=True)
            try:
                if not files.moved():
                    stranded = len(files.peek().messages)
                    if stranded:
                        raise StoreError(
                            f"{data_dir} holds a history in files ({stranded} messages): import "
                            "it first (python -m legacy_socket_server.migrate), or give "
                            "another --data-dir"
                        )
                files.mark_moved(config.database_url or "")
            except BaseException:
                files.close()
                raise
            self._dir_lock = files
        users: UserStore
        tokens: TokenStore
        if history is not None:
            users = PgUserStore(history.accounts.users)
            tokens = PgTokenStore(history.accounts.tokens, history.append, history.lookup_token)
        else:
            users = UserStore(data_dir, create_demo=config.demo_users)
            tokens = TokenStore(data_dir, fsync=config.fsync == "always")
        self.service = ChatService(
            users,
            history if history is not None else files,  # type: ignore[arg-type]
            tokens,
            max_frame_bytes=config.max_frame_bytes,
            send_burst=config.send_burst,
            send_rate=config.send_rate,
            max_sessions_per_user=config.max_sessions_per_user,
        )
        self.connections: set[Connection] = set()
        #: Each connection keeps what the GC walks (its objects, its recent events in the
        #: per-user logs): frozen while they live. A closed connection leaves none of ours
        #: in cycles (asyncio's transports a few objects, uvloop's none) and a thaw walks
        #: the whole history, so it waits for more churn than the web app's.
        self.heap = Heap(min_churn=CORE_THAW_CHURN, churn_share=1)
        #: Open connections per untrusted client address.
        self.per_address: dict[str, int] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tls_server: asyncio.AbstractServer | None = None
        self.port = config.port
        self.tls_port: int | None = None
        #: Present while TLS is on: the live certificate and its renewals.
        self.tls: CertificateReloader | None = None
        #: Connections with output waiting for the end of this loop turn.
        self._to_flush: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def flush_later(self, conn: Connection) -> None:
        """Write ``conn``'s output at the end of this loop turn, with everyone else's."""
        if not self._to_flush:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            # Ready callbacks run after the I/O callbacks of this turn: every
            # connection read in the turn has made its replies by then.
            self._loop.call_soon(self._flush_all)
        self._to_flush.append(conn)

    def _flush_all(self) -> None:
        conns, self._to_flush = self._to_flush, []
        for conn in conns:
            try:
                conn.send_out()
            except Exception:  # one connection's failure must not hold up the others' replies
                log.exception("writing to %s failed", conn.session.peer if conn.session else "?")

    @classmethod
    async def start(cls, config: ServerConfig) -> CoreServer:
        history = None
        if config.database_url is not None:
            try:
                history = await PgHistoryStore.open(
                    config.database_url,
                    users_file=Path(config.data_dir) / USERS_FILE,
                    demo_users=config.demo_users,
                )
            except StorageUnavailable as exc:
                raise StoreError(f"{exc} (--database-url / CHAT_DATABASE_URL)") from None
        try:
            self = cls(config, history)
        except BaseException:
            if history is not None:
                await history.aclose()
            raise
        loop = self._loop = asyncio.get_running_loop()
        self.service.bind_loop(loop)
        if history is not None:
            history.start_feed(
                self.service.apply_remote,
                on_reregistered=self.service.announce_presence,
                on_lost=self._feed_lost,
            )
        try:
            self._server = await loop.create_server(
                lambda: Connection(self), config.host, config.port, backlog=4096
            )
            if config.tls is not None:
                await self._start_tls(config.data_dir, config.host, config.tls)
        except BaseException:
            if self._server is not None:
                self._server.close()
            self.service.history.close()
            if self.pg is not None:
                await self.pg.aclose()
            if self._dir_lock is not None:
                self._dir_lock.close()
            raise
        sockets: Any = getattr(self._server, "sockets")  # noqa: B009 uvloop: a list, typeshed: a tuple (mypyc checks)
        self.port = sockets[0].getsockname()[1]
        log.info(
            "chat core listening on %s:%d (data in %s, fsync %s; modules %s)",
            config.host,
            self.port,
            Path(config.data_dir).resolve(),
            config.fsync,
            native.status,
        )
        if self.tls is not None:
            log.info(
                "TLS on %s:%d, certificate %s (%s)",
                config.host,
                self.tls_port,
                self.tls.fingerprint,
                self.tls.files.cert,
            )
        return self

    def _feed_lost(self, reason: str) -> None:
        """Changes of other cores were pruned before this core saw them: its memory is
        stale. Stop (a supervisor restarts it, and it reloads) rather than serve it."""
        log.critical("stopping: %s", reason)
        signal.raise_signal(signal.SIGTERM)

    async def _start_tls(self, data_dir: Path, host: str, tls: TLSListener) -> None:
        files = ensure_certificate(Path(data_dir), tls.cert, tls.key, tls.names)
        ctx = server_context(files)
        # The same Connection as plaintext: every cap, timeout and bound applies
        # once the handshake is done; a handshake that stalls is cut by asyncio.
        self._tls_server = await asyncio.get_running_loop().create_server(
            lambda: Connection(self),
            host,
            tls.port,
            ssl=ctx,
            ssl_handshake_timeout=tls.handshake_timeout,
            backlog=4096,
        )
        tls_sockets: Any = getattr(self._tls_server, "sockets")  # noqa: B009
        self.tls_port = tls_sockets[0].getsockname()[1]
        self.tls = CertificateReloader(ctx, files)
        self.tls.start()

    async def stop(self) -> None:
        """Graceful: stop accepting, close clients, compact history.json."""
        listeners = [s for s in (self._server, self._tls_server) if s is not None]
        for listener in listeners:
            listener.close()
        if self.tls is not None:
            self.tls.stop()
        self.service.closing = True
        self._flush_all()  # replies of this loop turn go out before their connections close
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)  # let connection_lost run for each
        for listener in listeners:
            await listener.wait_closed()
        self._server = self._tls_server = None
        self.heap.stop()
        self.service.close()
        if self.pg is not None:
            await self.pg.aclose()  # what was queued commits first
        if self._dir_lock is not None:
            self._dir_lock.close()
        log.info("chat core stopped; history compacted")
