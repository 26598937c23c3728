"""bench/peer_irc.py's clients: pairs that ping-pong direct messages over IRC or the core.

Each pair has one message in flight: the moment one side sees the other's message, it
sends the next. IRC clients register (NICK/USER, then wait for the end of the MOTD) and
send ``PRIVMSG``; core clients ``resume`` with a ready-made token, keep one held ``poll``
and send ``send_message`` with ``"echo": false``, as the desktop client does. All are
asyncio Protocols in one process, so that the clients are not the limit.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

#: Every client of a round is connected and logged in within this, or the round fails.
LOGIN_DEADLINE_S = 60.0

_now = time.perf_counter_ns
_decode = msgspec.json.Decoder().decode  # the clients must not be the limit


class Pair:
    """When the pair's one message in flight was sent (perf_counter_ns)."""

    __slots__ = ("sent_ns",)

    def __init__(self) -> None:
        self.sent_ns = 0


class Meter:
    """Shared by every client of a run; latencies are kept only inside the window."""

    __slots__ = ("seen", "samples", "measuring", "errors")

    def __init__(self) -> None:
        self.seen = 0
        self.samples: list[int] = []
        self.measuring = False
        self.errors: list[str] = []


class _Client(asyncio.Protocol):
    """One connection. Subclasses log in (``login``) and write a message (``write_msg``)."""

    def __init__(self, pair: Pair, meter: Meter, ready: asyncio.Future[None]) -> None:
        self.pair, self.meter, self.ready = pair, meter, ready
        self.transport: Any = None
        self.buf = b""
        self.closing = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.login()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.fail(f"connection lost: {exc}")

    def fail(self, why: str) -> None:
        self.meter.errors.append(why)
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))

    def send(self) -> None:
        self.pair.sent_ns = _now()
        self.write_msg()

    def on_seen(self, before: bytes = b"") -> None:
        # The hot path: one clock read serves as this message's arrival and the next's send.
        meter, pair, now = self.meter, self.pair, _now()
        meter.seen += 1
        if meter.measuring:
            meter.samples.append(now - pair.sent_ns)
        pair.sent_ns = now
        self.write_msg(before)


class IrcClient(_Client):
    def __init__(self, nick: str, peer: str, *rest: Any) -> None:
        super().__init__(*rest)
        self.hello = f"NICK {nick}\r\nUSER {nick} 0 * :bench\r\n".encode()
        self.message = f"PRIVMSG {peer} :ping\r\n".encode()

    def login(self) -> None:
        self.transport.write(self.hello)

    def write_msg(self, before: bytes = b"") -> None:
        self.transport.write(self.message)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        *lines, self.buf = data.split(b"\r\n")
        for line in lines:
            if b" PRIVMSG " in line:
                self.on_seen()
            elif line.startswith(b"PING "):
                self.transport.write(b"PONG " + line[5:] + b"\r\n")
            elif not self.ready.done():
                self.registering(line)

    def registering(self, line: bytes) -> None:
        # Logged in at the end of the MOTD (376, or 422 without one): nothing else follows.
        code = line.split(b" ", 2)[1] if line.count(b" ") >= 2 else b""
        if code in (b"376", b"422"):
            self.ready.set_result(None)
        elif line.startswith(b"ERROR") or (len(code) == 3 and code[:1] in (b"4", b"5")):
            self.fail(line.decode(errors="replace"))


class CoreClient(_Client):
    def __init__(self, me: str, peer: str, token: str, *rest: Any) -> None:
        super().__init__(*rest)
        self.me, self.peer, self.token = me, peer.encode(), token
        self.rid = 0
        self.cursor = 0

    def login(self) -> None:
        data = json.dumps({"purpose": "resume", "id": 0, "token": self.token}).encode()
        self.transport.write(b"$%d%s$" % (len(data), data))

    def poll(self) -> bytes:
        self.rid += 1
        data = b'{"purpose":"poll","id":%d,"cursor":%d,"wait_ms":25000}' % (self.rid, self.cursor)
        return b"$%d%s$" % (len(data), data)

    def write_msg(self, before: bytes = b"") -> None:
        # The next poll and the message leave in one write, as a client that polls and
        # sends in the same turn would write them.
        self.rid += 1
        data = b'{"purpose":"send_message","id":%d,"to":"%s","text":"ping","echo":false}' % (
            self.rid,
            self.peer,
        )
        self.transport.write(b"%s$%d%s$" % (before, len(data), data))

    def data_received(self, data: bytes) -> None:
        # $LEN{json}$ where LEN is digits, so the first "{" after the "$" starts the data.
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        while pos < end:
            start = buf.find(b"{", pos)
            if start < 0:
                break
            stop = start + int(buf[pos + 1 : start])
            if stop >= end:
                break
            self.on_frame(buf[start:stop])
            pos = stop + 1
        self.buf = buf[pos:]

    def on_frame(self, frame: bytes) -> None:
        # A third of the frames are acks: not worth decoding (the recipient's poll counts).
        if frame.startswith(b'{"purpose":"send_message"') and b'"ok":true' in frame:
            return
        obj = _decode(frame)
        if obj.get("ok") is not True:
            self.fail(f"{obj.get('purpose')}: {obj.get('error')} {obj.get('message')}")
            return
        self.cursor = obj["cursor"]  # resume and poll replies both carry one
        poll = self.poll()
        if obj["purpose"] != "resume":
            for ev in obj["events"]:  # presence events are ignored
                if ev["type"] == "message" and ev["message"]["to"] == self.me:
                    self.on_seen(poll)
                    return
        self.transport.write(poll)
        if obj["purpose"] == "resume":
            self.ready.set_result(None)


def make_clients(
    server: str, pairs: int, meter: Meter, tokens: dict[str, str]
) -> list[tuple[Callable[[], _Client], asyncio.Future[None]]]:
    """(protocol factory, ready future) for A then B of every pair: u0000↔u0001, …"""
    loop = asyncio.get_running_loop()
    out = []
    for p in range(pairs):
        pair = Pair()
        a, b = f"u{2 * p:04d}", f"u{2 * p + 1:04d}"
        for me, peer in ((a, b), (b, a)):
            ready = loop.create_future()
            if server == "ngircd":
                factory = partial(IrcClient, me, peer, pair, meter, ready)
            else:  # the router takes the name itself for a token
                token = me if server == "router" else tokens[me]
                factory = partial(CoreClient, me, peer, token, pair, meter, ready)
            out.append((factory, ready))
    return out


async def connect_all(port: int, clients: list, batch_size: int) -> list[_Client]:
    """Connect and log in every client, in batches, within LOGIN_DEADLINE_S; on failure
    close what was opened (the server must not keep those logins for the next round)."""
    loop = asyncio.get_running_loop()
    protocols: list[_Client] = []
    try:
        async with asyncio.timeout(LOGIN_DEADLINE_S):
            for i in range(0, len(clients), batch_size):
                batch = clients[i : i + batch_size]
                conns = await asyncio.gather(
                    *(loop.create_connection(f, "127.0.0.1", port) for f, _ in batch)
                )
                protocols += [proto for _, proto in conns]
                await asyncio.gather(*(ready for _, ready in batch))
    except BaseException:
        await hang_up(protocols)
        raise
    return protocols


async def hang_up(protocols: list[_Client]) -> None:
    for proto in protocols:
        proto.closing = True
        proto.transport.close()
    await asyncio.sleep(0.1)  # let the closes go out before the loop ends
