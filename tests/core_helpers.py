"""Helpers for the core's tests: a service harness and a raw-bytes TCP client.

``RawClient`` speaks the wire format with nothing but a socket and the codec
(a black-box client, like h11's tests), so the TCP tests exercise the server
exactly as any other program would.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from legacy_socket_server import store as store_module
from legacy_socket_server.chat import ChatService, Session
from legacy_socket_server.limits import HashGate
from legacy_socket_server.protocol import FrameDecoder, ProtocolError, encode
from legacy_socket_server.store import HistoryStore
from legacy_socket_server.tokens import TokenStore
from legacy_socket_server.users import UserStore

DEMO = {"Alice": "123", "Bob": "456", "Charlie": "789"}

_users_template: Path | None = None


def seed_users(data_dir: Path, template_root: Path) -> None:
    """Copy a demo users.json (hashed once per run, argon2 is slow) into ``data_dir``."""
    global _users_template
    if _users_template is None or not _users_template.exists():
        template_root.mkdir(parents=True, exist_ok=True)
        UserStore(template_root)
        _users_template = template_root / "users.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(_users_template, data_dir / "users.json")


def make_service(data_dir: Path, **kwargs: Any) -> ChatService:
    """A real ChatService over real stores in ``data_dir`` (must run inside a loop)."""
    fsync = kwargs.pop("fsync", "everysec")
    min_compact = kwargs.pop("min_compact_bytes", 16 * 1024 * 1024)
    # Unit tests log in many times back to back and want plain replies; the
    # gate's spacing is tested on its own and through the real server.
    kwargs.setdefault("hash_gate", HashGate(burst=float("inf")))
    return ChatService(
        UserStore(data_dir),
        HistoryStore(data_dir, fsync=fsync, min_compact_bytes=min_compact),
        TokenStore(data_dir),
        **kwargs,
    )


class Client:
    """One session on a service: requests go through ``handle``, out-of-band replies to ``out``."""

    _ids = itertools.count(1)

    def __init__(self, svc: ChatService) -> None:
        self.svc = svc
        self.out: list[dict[str, Any]] = []
        self.session = Session(self.out.append, peer="test")

    def req(self, purpose: str, **fields: Any) -> dict[str, Any] | None:
        """Send one request; return the immediate reply (None for a held poll)."""
        result = self.svc.handle(self.session, {"purpose": purpose, **fields})
        assert not isinstance(result, asyncio.Future), "use areq in fsync=always mode"
        return result

    async def areq(self, purpose: str, **fields: Any) -> dict[str, Any] | None:
        result = self.svc.handle(self.session, {"purpose": purpose, **fields})
        if isinstance(result, asyncio.Future):
            return await asyncio.wait_for(result, 5)
        return result

    def ok(self, purpose: str, **fields: Any) -> dict[str, Any]:
        reply = self.req(purpose, **fields)
        assert reply is not None and reply["ok"] is True, reply
        return reply

    def err(self, purpose: str, code: str, **fields: Any) -> dict[str, Any]:
        reply = self.req(purpose, **fields)
        assert reply is not None and reply["ok"] is False, reply
        assert reply["error"] == code, reply
        assert isinstance(reply["message"], str) and reply["message"]
        return reply

    def login(self, name: str, password: str | None = None) -> dict[str, Any]:
        return self.ok(
            "login", username=name, password=DEMO[name] if password is None else password
        )

    def poll_events(self, **fields: Any) -> list[dict[str, Any]]:
        return self.ok("poll", **fields)["events"]

    def poll_to_the_end(self, cursor: int, **fields: Any) -> list[dict[str, Any]]:
        """Poll on from ``cursor`` until a reply has no events; all the replies, that one too."""
        replies = [self.ok("poll", cursor=cursor, **fields)]
        while replies[-1]["events"]:
            assert len(replies) < 1000, "polling never reached the end"
            replies.append(self.ok("poll", cursor=replies[-1]["cursor"], **fields))
        return replies

    def send(self, to: str, text: str, **fields: Any) -> dict[str, Any]:
        return self.ok("send_message", to=to, text=text, **fields)["message"]


class RawClient:
    """A black-box TCP client: raw bytes out, the codec to cut replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.inbox: list[dict[str, Any] | ProtocolError] = []
        self._ids = itertools.count(1)
        self.eof = False

    @classmethod
    async def connect(cls, host: str, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        return cls(reader, writer)

    @classmethod
    async def to(cls, core: Any) -> RawClient:
        """Connect to ``core``: an in-process ``CoreServer`` or a ``CoreProcess``."""
        host = core.config.host if hasattr(core, "config") else core.host
        return await cls.connect(host, core.port)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, obj: dict[str, Any]) -> None:
        await self.send_raw(encode(obj))

    async def _read_more(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("timed out waiting for a packet")
        try:
            data = await asyncio.wait_for(self.reader.read(65536), remaining)
        except TimeoutError:
            raise AssertionError("timed out waiting for a packet") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise ConnectionError("server closed the connection")
        self.inbox.extend(self.decoder.feed(data))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next packet (in arrival order)."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            await self._read_more(deadline)
        item = self.inbox.pop(0)
        assert not isinstance(item, ProtocolError), f"server sent a bad packet: {item}"
        return item

    async def recv_match(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first packet matching ``pred`` (earlier non-matching ones stay queued)."""
        deadline = time.monotonic() + timeout
        while True:
            for k, item in enumerate(self.inbox):
                if isinstance(item, dict) and pred(item):
                    del self.inbox[k]
                    return item
            await self._read_more(deadline)

    async def request(self, purpose: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        rid = next(self._ids)
        await self.send({"purpose": purpose, "id": rid, **fields})
        return await self.recv_match(lambda m: m.get("id") == rid, timeout)

    async def call(self, purpose: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        reply = await self.request(purpose, timeout, **fields)
        assert reply["ok"] is True, reply
        return reply

    async def login(self, name: str, password: str | None = None) -> dict[str, Any]:
        return await self.call(
            "login", username=name, password=DEMO[name] if password is None else password
        )

    async def expect_closed(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Read until the server closes; return what arrived before the close."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while True:
            got.extend(i for i in self.inbox if isinstance(i, dict))
            self.inbox.clear()
            try:
                await self._read_more(deadline)
            except ConnectionError:
                return got

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            pass


async def whole_history(client: Any, peer: str) -> list[dict[str, Any]]:
    """The whole conversation with ``peer``, oldest first, paging back with ``before``.

    ``client`` is anything with ``call(purpose, **fields)``: a RawClient or a CoreClient.
    """
    out: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        fields: dict[str, Any] = {"with": peer, "limit": 200}
        if before is not None:
            fields["before"] = before
        page = await client.call("history", **fields)
        out[:0] = page["messages"]
        if not page["has_more"]:
            return out
        before = page["messages"][0]["id"]


@contextlib.contextmanager
def failing_writes(path: Path, err: int) -> Iterator[None]:
    """Every ``os.write`` to the file now at ``path`` fails with ``err`` (a full or
    read-only disk, a dead descriptor); writes to anything else go through."""
    target = os.stat(path)
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        try:
            ours = os.path.samestat(os.fstat(fd), target)
        except OSError:
            ours = False
        if ours:
            raise OSError(err, os.strerror(err))
        return real_write(fd, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_module.os, "write", write)
        yield


async def gather_limited(coros: list[Awaitable[Any]], limit: int = 50) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


class FakeClock:
    """A service's injected clock (``ChatService(clock=...)``): real time plus ``offset``."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def cyclic_garbage() -> list[Any]:
    """What a full collection would find unreachable now (left in place, then let go)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
