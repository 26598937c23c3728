"""Hostile and slow peers, and a failing disk: the core loses nothing and keeps serving.

Each test keeps a pair of well-behaved users chatting while something bad
happens, and asserts their messages still flow and nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import StartCore
from core_helpers import RawClient, failing_writes
from waiting import until

from legacy_socket_server.protocol import encode
from legacy_socket_server.server import CoreServer


@pytest.fixture(params=["files", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every in-process core here runs on the file store and on PostgreSQL."""
    return request.param


async def chatting_pair(core: CoreServer) -> tuple[RawClient, RawClient]:
    alice = await RawClient.to(core)
    bob = await RawClient.to(core)
    await alice.login("Alice")
    await bob.login("Bob")
    return alice, bob


async def assert_still_chatting(alice: RawClient, bob: RawClient, text: str) -> None:
    """Alice sends; Bob sees it through a poll: the server is alive for others."""
    sent = await alice.call("send_message", to="Bob", text=text)
    msg_id = sent["message"]["id"]
    seen: list[dict[str, Any]] = []

    async def bob_sees() -> bool:
        r = await bob.call("poll", wait_ms=2000)
        seen.extend(e["message"] for e in r["events"] if e["type"] == "message")
        return any(m["id"] == msg_id for m in seen)

    for _ in range(20):
        if await bob_sees():
            return
    raise AssertionError(f"Bob never saw {text!r}")


async def test_half_packet_then_stall_is_cut_off_others_unaffected(
    start_core: StartCore,
) -> None:
    core = await start_core(partial_timeout=0.5)
    alice, bob = await chatting_pair(core)
    staller = await RawClient.to(core)
    await staller.send_raw(encode({"purpose": "ping"})[:7])  # half a packet, then nothing
    await assert_still_chatting(alice, bob, "while someone stalls")
    got = await staller.expect_closed()
    assert got and got[-1]["error"] == "bad_frame" and "incomplete" in got[-1]["message"]
    await assert_still_chatting(alice, bob, "after the staller is gone")


async def test_peer_that_never_reads_is_dropped(start_core: StartCore) -> None:
    core = await start_core(max_output_buffer=256 * 1024)
    alice, bob = await chatting_pair(core)
    big = "€" * 10_000  # 30 KB in UTF-8
    for _ in range(10):
        await alice.call("send_message", to="Charlie", text=big)
    # A raw socket with a tiny receive buffer that asks for history pages and never reads.
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", core.port))
    hog.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(
        hog, encode({"purpose": "login", "username": "Charlie", "password": "789"})
    )
    await until(lambda: len(core.connections) == 3, what="Charlie's connection")
    page = encode({"purpose": "history", "with": "Alice", "limit": 200})
    try:
        for _ in range(400):  # ~0 bytes read by us, ~120 MB of replies asked for
            await loop.sock_sendall(hog, page)
    except OSError:
        pass  # the server may already have dropped us: that is the point
    await until(lambda: len(core.connections) == 2, timeout=15, what="the server to drop the hog")
    hog.close()
    await assert_still_chatting(alice, bob, "after the hog was dropped")


async def test_connection_cap_answers_excess_with_server_busy(core_proc: Any) -> None:
    # The silent connections hold their slots for the whole test: no login deadline
    # closes them meanwhile (2,000 connects take a while on a busy machine).
    core_proc.extra_args += ["--max-connections", "500", "--login-timeout", "600"]
    core_proc.restart()
    alice = await RawClient.connect(core_proc.host, core_proc.port)
    bob = await RawClient.connect(core_proc.host, core_proc.port)
    await alice.login("Alice")
    await bob.login("Bob")
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    for _ in range(2000):
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, (core_proc.host, core_proc.port)), 10)
        except (OSError, TimeoutError):
            s.close()
            continue
        socks.append(s)
    assert len(socks) >= 1500, "the listen backlog refused far too many"

    firsts: collections.Counter[str] = collections.Counter()

    async def first_packet(s: socket.socket) -> None:
        try:
            data = await loop.sock_recv(s, 4096)
        except OSError as exc:
            firsts[type(exc).__name__] += 1
            return
        firsts["server_busy" if b"server_busy" in data else repr(data[:40])] += 1

    readers = [asyncio.create_task(first_packet(s)) for s in socks]
    # Two chatters + up to 498 silent ones fit; the rest are told and closed.
    excess = len(socks) - 498
    try:
        await until(lambda: firsts["server_busy"] >= excess, 30, f"server_busy for {excess}")
    finally:
        print(f"first packets of {len(socks)} connections: {dict(firsts)}")
    await assert_still_chatting(alice, bob, "with 2,000 connections knocking")
    for r in readers:
        r.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for s in socks:
        s.close()
    await assert_still_chatting(alice, bob, "after they left")


@pytest.mark.parametrize(
    ("payload", "code", "closes"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "bad_request", False),
        (b'{"purpose": "ping", "x": NaN}', "bad_request", False),
        (b'{"purpose": "ping", "x": -Infinity}', "bad_request", False),
        (b'{"purpose": "p\xff\xfeing"}', "bad_request", False),
        (b'{"purpose": "' + b"a" * (1024 * 1024 - 14) + b'"}', "bad_frame", True),
    ],
    ids=["nested-100k", "nan", "infinity", "invalid-utf8", "1MiB+1"],
)
async def test_hostile_payloads_get_their_error(
    start_core: StartCore, payload: bytes, code: str, closes: bool
) -> None:
    core = await start_core()
    alice, bob = await chatting_pair(core)
    evil = await RawClient.to(core)
    if code == "bad_frame":
        assert len(payload) == 1024 * 1024 + 1
    await evil.send_raw(b"$%d%s$" % (len(payload), payload))
    if closes:
        got = await evil.expect_closed()
        assert got[-1]["error"] == code
    else:
        reply = await evil.recv()
        assert reply["error"] == code, reply
        assert (await evil.request("ping"))["ok"] is True  # still open and sane
    await assert_still_chatting(alice, bob, f"after {code}")


@pytest.mark.parametrize("store_kind", ["files"])  # PostgreSQL down: test_storage_pg.py
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
async def test_disk_full_refuses_sends_keeps_reads_and_recovers(
    start_core: StartCore, tmp_path: Path, err: int
) -> None:
    """A full disk, or one remounted read-only: writes are refused, reads go on."""
    data = tmp_path / "disk"
    core = await start_core(data)
    alice, bob = await chatting_pair(core)
    before = await alice.call("send_message", to="Bob", text="saved before the disk filled")

    with failing_writes(data / "history.journal", err):
        refused = await alice.request("send_message", to="Bob", text="lost to a full disk?")
        assert refused["ok"] is False and refused["error"] == "storage_unavailable"
        marker = await bob.request("read", **{"with": "Alice", "up_to": before["message"]["id"]})
        assert marker["error"] == "storage_unavailable"
        # Reads keep working.
        hist = await bob.call("history", **{"with": "Alice"})
        assert [m["text"] for m in hist["messages"]] == ["saved before the disk filled"]
        assert (await bob.call("users"))["users"][0]["unread"] == 1
        assert (await alice.request("ping"))["ok"] is True
    # Space is back.
    after = await alice.call("send_message", to="Bob", text="saved after space returned")
    await core.stop()

    core2 = await start_core(data)
    a2 = await RawClient.to(core2)
    await a2.login("Alice")
    texts = [m["text"] for m in (await a2.call("history", **{"with": "Bob"}))["messages"]]
    assert texts == ["saved before the disk filled", "saved after space returned"]
    assert after["message"]["id"] > before["message"]["id"]


@pytest.mark.parametrize("store_kind", ["files"])  # with PostgreSQL tokens are rows
async def test_damaged_tokens_file_is_set_aside_not_fatal(
    start_core: StartCore, tmp_path: Path
) -> None:
    data = tmp_path / "tok"
    data.mkdir()
    (data / "tokens.json").write_text('{"abc": [1, 2')  # torn by hand
    core = await start_core(data)
    alice, bob = await chatting_pair(core)
    await assert_still_chatting(alice, bob, "despite a damaged tokens.json")
    aside = list(data.glob("tokens.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"abc": [1, 2'
