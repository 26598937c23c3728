"""The core end to end over real TCP, driven by a black-box client speaking raw bytes."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CoreProcess, StartCore, missing
from core_helpers import RawClient, gather_limited
from waiting import until

from legacy_socket_server.protocol import FrameDecoder, encode
from legacy_socket_server.server import CoreServer

# -- basic flows ---------------------------------------------------------------------------


@pytest.fixture(params=["files", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs against the file store and PostgreSQL (docs/scaling.md)."""
    return request.param


async def test_chat_end_to_end(core: CoreServer) -> None:
    alice, bob = await RawClient.to(core), await RawClient.to(core)
    la = await alice.login("Alice")
    assert la["users"] == [
        {"username": "Bob", "online": False, "unread": 0},
        {"username": "Charlie", "online": False, "unread": 0},
    ]
    await bob.login("Bob")
    ev = await alice.call("poll", cursor=la["cursor"])
    assert ev["events"] == [{"type": "presence", "username": "Bob", "online": True}]
    # Alice holds a poll for 30 s; Bob's message wakes it: the reply comes well inside
    # those 30 s and carries the message (a poll that ran out would carry nothing).
    await alice.send({"purpose": "poll", "id": "held", "wait_ms": 30_000})
    sent = (await bob.call("send_message", to="Alice", text="hi Alice ☕"))["message"]
    woke = await alice.recv_match(lambda m: m.get("id") == "held", timeout=15)
    assert woke["ok"] and woke["events"] == [{"type": "message", "message": sent}]
    users = (await alice.call("users"))["users"]
    assert users[0] == {"username": "Bob", "online": True, "unread": 1}
    hist = await alice.call("history", **{"with": "Bob"})
    assert hist["messages"] == [sent] and hist["has_more"] is False
    await alice.call("read", **{"with": "Bob"}, up_to=sent["id"])
    assert (await alice.call("users"))["users"][0]["unread"] == 0
    err = await bob.request("send_message", to="Bob", text="me")
    assert err["ok"] is False and err["error"] == "unknown_user"
    await alice.send({"purpose": "exit", "id": "bye"})
    assert await alice.recv() == {"purpose": "exit", "id": "bye", "ok": True}
    await alice.expect_closed()
    poll = await bob.call("poll")
    assert {"type": "presence", "username": "Alice", "online": False} in poll["events"]
    await bob.close()


async def test_send_without_echo_next_to_a_held_poll(core: CoreServer) -> None:
    """The desktop client's hot path: a held poll and an ``echo: false`` send in one
    packet. The poll is not woken by its own message; the peer's reply answers it alone."""
    alice, bob = await RawClient.to(core), await RawClient.to(core)
    la = await alice.login("Alice")
    await bob.login("Bob")
    cursor = (await alice.call("poll", cursor=la["cursor"]))["cursor"]  # Bob's presence
    poll = {"purpose": "poll", "id": "held", "cursor": cursor, "wait_ms": 30_000}
    send = {"purpose": "send_message", "id": "s", "to": "Bob", "text": "hi", "echo": False}
    await alice.send_raw(encode(poll) + encode(send))
    ack = await alice.recv()
    assert ack["id"] == "s" and ack["ok"] is True and ack["message"]["text"] == "hi"
    reply = (await bob.call("send_message", to="Alice", text="hello"))["message"]
    woke = await alice.recv()
    assert woke["id"] == "held" and woke["events"] == [{"type": "message", "message": reply}]
    assert (await alice.call("poll", cursor=woke["cursor"]))["events"] == []
    await alice.close()
    await bob.close()


async def test_replies_echo_ids_in_request_order(core: CoreServer) -> None:
    c = await RawClient.to(core)
    ids: list[Any] = [1, "two", 3, "", 2**40, "x" * 64]
    await c.send_raw(b"".join(encode({"purpose": "ping", "id": i}) for i in ids))
    got = [await c.recv() for _ in ids]
    assert got == [{"purpose": "ping", "id": i, "ok": True} for i in ids]
    await c.send({"purpose": "users", "id": 7})
    r = await c.recv()
    assert (r["purpose"], r["id"], r["ok"], r["error"]) == ("users", 7, False, "not_logged_in")
    await c.close()


async def test_pipelined_requests_after_login(core: CoreServer) -> None:
    c = await RawClient.to(core)
    reqs = [
        {"purpose": "login", "id": 1, "username": "Alice", "password": "123"},
        {"purpose": "send_message", "id": 2, "to": "Bob", "text": "a"},
        {"purpose": "send_message", "id": 3, "to": "Bob", "text": "b"},
        {"purpose": "history", "id": 4, "with": "Bob"},
        {"purpose": "nope", "id": 5},
    ]
    await c.send_raw(b"".join(encode(r) for r in reqs))
    got = [await c.recv() for _ in reqs]
    assert [g["id"] for g in got] == [1, 2, 3, 4, 5]
    assert [g["ok"] for g in got] == [True, True, True, True, False]
    assert [m["text"] for m in got[3]["messages"]] == ["a", "b"]
    assert got[4]["error"] == "unknown_purpose"
    await c.close()


async def test_ping_and_exit_before_login(core: CoreServer) -> None:
    c = await RawClient.to(core)
    assert await c.request("ping") == {"purpose": "ping", "id": 1, "ok": True}
    r = await c.request("send_message", to="Bob", text="x")
    assert r["error"] == "not_logged_in" and r["id"] == 2
    assert await c.request("exit") == {"purpose": "exit", "id": 3, "ok": True}
    await c.expect_closed()


async def test_bad_frame_closes(core: CoreServer) -> None:
    for junk in [b"GET / HTTP/1.1\r\n\r\n", b"$", b"$12345678", b"$5{}", b"$2{}X"]:
        c = await RawClient.to(core)
        await c.send_raw(encode({"purpose": "ping", "id": 1}) + junk)
        if junk in (b"$", b"$5{}"):
            # Incomplete, not yet an error: the connection waits for the rest.
            assert await c.recv() == {"purpose": "ping", "id": 1, "ok": True}
            await c.send_raw(b"x" * 10)
        got = await c.expect_closed()
        assert got[0] == {"purpose": "ping", "id": 1, "ok": True} or junk in (b"$", b"$5{}")
        errs = [g for g in got if g.get("purpose") == "error"]
        assert len(errs) == 1 and errs[0]["error"] == "bad_frame" and errs[0]["ok"] is False
        assert errs[0]["message"]


async def test_oversized_len_closes(start_core: StartCore) -> None:
    core = await start_core(max_frame_bytes=1000)
    c = await RawClient.to(core)
    await c.send_raw(b"$1001{")
    got = await c.expect_closed()
    assert got[0]["error"] == "bad_frame" and "1000" in got[0]["message"]
    c = await RawClient.to(core)
    await c.login("Alice")
    ids = [
        (await c.call("send_message", to="Bob", text=f"{i}" + "x" * 300))["message"]["id"]
        for i in range(5)
    ]
    # Replies never exceed the limit either: the history page is cut short.
    await c.send({"purpose": "history", "id": 1, "with": "Bob"})
    raw_len_seen = len(encode(await c.recv()))
    assert raw_len_seen <= 1000 + 9
    page = await c.call("history", **{"with": "Bob"})
    assert page["has_more"] is True
    assert [m["id"] for m in page["messages"]] == ids[-len(page["messages"]) :]
    await c.send({"purpose": "send_message", "id": 2, "to": "Bob", "text": "é" * 600})
    got = await c.expect_closed()
    assert got[-1]["error"] == "bad_frame"


async def test_bad_request_keeps_connection(core: CoreServer) -> None:
    c = await RawClient.to(core)
    bodies = [
        b"not json",
        b"[1,2]",
        b'{"purpose":5}',
        b'{"purpose":"ping","x":NaN}',
        b'{"purpose":"\xff"}',
        b'{"purpose":"\\ud800"}',
        b'{"purpose":"ping","id":"\\udc00"}',
        b'{"purpose":"ping","id":1.5}',
        b'{"purpose":"p","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ]
    for body in bodies:
        await c.send_raw(b"$%d%s$" % (len(body), body))
        r = await c.recv()
        assert r["ok"] is False and r["error"] == "bad_request", (body[:40], r)
        assert "id" not in r
    assert await c.request("ping") == {"purpose": "ping", "id": 1, "ok": True}
    await c.close()


async def test_lone_surrogate_text_is_bad_request(core: CoreServer) -> None:
    c = await RawClient.to(core)
    await c.login("Alice")
    body = b'{"purpose":"send_message","id":9,"to":"Bob","text":"a\\ud800b"}'
    await c.send_raw(b"$%d%s$" % (len(body), body))
    r = await c.recv()
    assert r["id"] == 9 and r["error"] == "bad_request"
    assert (await c.call("history", **{"with": "Bob"}))["messages"] == []
    await c.close()


# -- timeouts and limits --------------------------------------------------------------------


async def test_partial_packet_timeout(start_core: StartCore) -> None:
    core = await start_core(partial_timeout=0.5)
    # A packet that arrives in two reads, completed in time, is served.
    ok = await RawClient.to(core)
    packet = encode({"purpose": "ping", "id": 1})
    await ok.send_raw(packet[:5])
    staller = await RawClient.to(core)
    # A round trip on another connection: the server has read the first half by now
    # (it reached the server's socket first), so the packet is pending in between.
    assert await staller.request("ping") == {"purpose": "ping", "id": 1, "ok": True}
    await ok.send_raw(packet[5:])
    assert await ok.recv() == {"purpose": "ping", "id": 1, "ok": True}
    # A packet left incomplete is cut off after the timeout, never before it.
    t0 = time.monotonic()
    await staller.send_raw(b'$30{"purpose":')
    got = await staller.expect_closed()
    assert time.monotonic() - t0 > 0.49  # the server's timer runs on this same clock
    assert len(got) == 1 and got[0]["error"] == "bad_frame"
    assert "0.5" in got[0]["message"]
    # Meanwhile ``ok`` sat idle for longer than the timeout, and idle time between
    # packets is not a partial packet: a timer left armed when its packet completed
    # was due before the staller's, and the loop runs timers in deadline order.
    assert await ok.request("ping") == {"purpose": "ping", "id": 1, "ok": True}
    await ok.close()


async def test_partial_timeout_counts_from_each_packet(start_core: StartCore) -> None:
    # A steady stream where every write ends mid-packet: no single packet stays
    # incomplete for long (0.1 s, a tenth of the timeout), so the connection must
    # survive well past the timeout.
    core = await start_core(partial_timeout=1.0)
    c = await RawClient.to(core)
    packets = [encode({"purpose": "ping", "id": i}) for i in range(20)]
    stream = b"".join(packets)
    step = len(packets[0]) + 3  # never aligned with a packet boundary
    t0 = time.monotonic()
    for k in range(0, len(stream), step):
        await c.send_raw(stream[k : k + step])
        await asyncio.sleep(0.1)  # pacing the writes, not waiting for an outcome
    assert time.monotonic() - t0 > 1.5
    got = [await c.recv() for _ in packets]
    assert [g.get("id") for g in got] == list(range(20)), got
    await c.close()


async def test_server_busy_at_connection_limit(start_core: StartCore) -> None:
    core = await start_core(max_connections=3)
    conns = [await RawClient.to(core) for _ in range(3)]
    for c in conns:
        assert (await c.request("ping"))["ok"]
    extra = await RawClient.to(core)
    got = await extra.expect_closed()
    assert got == [
        {
            "purpose": "error",
            "ok": False,
            "error": "server_busy",
            "message": got[0]["message"],
        }
    ]
    assert got[0]["message"]
    # The others are untouched; a freed slot is usable again.
    assert (await conns[0].request("ping"))["ok"]
    await conns[0].close()
    await until(lambda: len(core.connections) == 2, what="the slot to free")
    again = await RawClient.to(core)
    assert (await again.request("ping"))["ok"]
    for c in [*conns[1:], again]:
        await c.close()


async def test_second_poll_ends_the_first_over_tcp(core: CoreServer) -> None:
    a, b = await RawClient.to(core), await RawClient.to(core)
    await a.login("Alice")
    await b.login("Bob")
    await a.call("poll")
    await a.send({"purpose": "poll", "id": "p1", "wait_ms": 20_000})
    await a.send({"purpose": "ping", "id": "between"})
    assert (await a.recv())["id"] == "between"  # a held poll does not block later replies
    await a.send({"purpose": "poll", "id": "p2", "wait_ms": 20_000})
    first = await a.recv()
    assert first["id"] == "p1" and first["ok"] and first["events"] == []
    m = (await b.call("send_message", to="Alice", text="x"))["message"]
    second = await a.recv()
    assert second["id"] == "p2" and second["events"] == [{"type": "message", "message": m}]
    await a.close()
    await b.close()


async def test_disconnect_sets_offline(core: CoreServer) -> None:
    a, b = await RawClient.to(core), await RawClient.to(core)
    await b.login("Bob")
    await a.login("Alice")
    await b.call("poll")
    await a.close()  # no exit: a dropped connection
    r = await b.call("poll", wait_ms=5000)
    assert r["events"] == [{"type": "presence", "username": "Alice", "online": False}]
    await b.close()


async def test_resume_over_tcp_after_drop(core: CoreServer) -> None:
    a = await RawClient.to(core)
    token = (await a.login("Alice"))["token"]
    await a.close()
    a2 = await RawClient.to(core)
    r = await a2.call("resume", token=token)
    assert r["username"] == "Alice" and r["token"] == token
    await a2.request("exit")
    await a2.expect_closed()
    a3 = await RawClient.to(core)
    assert (await a3.request("resume", token=token))["error"] == "invalid_token"
    await a3.close()


# -- many clients ---------------------------------------------------------------------------


async def test_500_connections_polling_while_messages_flow(core_proc: Any) -> None:
    # 500 sessions of three users: past the per-user session cap, which is not under test.
    core_proc.extra_args += ["--max-sessions-per-user", "1000"]
    core_proc.restart()
    host, port = core_proc.host, core_proc.port
    names = ["Alice", "Bob", "Charlie"]
    tokens = {}
    for n in names:
        c = await RawClient.connect(host, port)
        tokens[n] = (await c.login(n))["token"]
        await c.close()

    async def open_session(k: int) -> tuple[str, RawClient, int]:
        name = names[k % 3]
        c = await RawClient.connect(host, port)
        r = await c.call("resume", timeout=30, token=tokens[name])
        return name, c, r["cursor"]

    sessions = await gather_limited([open_session(k) for k in range(500)], limit=100)
    senders = {n: (await open_session(i))[1] for i, n in enumerate(names)}
    per_sender = 60
    expected: dict[str, set[int]] = {n: set() for n in names}
    got: list[list[int]] = [[] for _ in sessions]
    done = asyncio.Event()

    async def send_all(name: str) -> None:
        c = senders[name]
        others = [n for n in names if n != name]
        for i in range(per_sender):
            to = others[i % 2]
            m = (await c.call("send_message", to=to, text=f"{name}->{to} {i}"))["message"]
            expected[name].add(m["id"])
            expected[to].add(m["id"])

    async def poll_loop(idx: int, name: str, c: RawClient, cursor: int) -> None:
        while True:
            r = await c.call("poll", timeout=30, cursor=cursor, wait_ms=1000)
            assert "reset" not in r
            cursor = r["cursor"]
            got[idx] += [e["message"]["id"] for e in r["events"] if e["type"] == "message"]
            if done.is_set() and len(got[idx]) >= len(expected[name]):
                return

    pollers = [
        asyncio.create_task(poll_loop(i, n, c, cur)) for i, (n, c, cur) in enumerate(sessions)
    ]
    await asyncio.gather(*(send_all(n) for n in names))
    done.set()
    await asyncio.wait_for(asyncio.gather(*pollers), 60)
    assert sum(len(v) for v in expected.values()) == 2 * 3 * per_sender
    for idx, (name, _, _) in enumerate(sessions):
        assert len(got[idx]) == len(set(got[idx])), f"session {idx} got a duplicate"
        assert set(got[idx]) == expected[name], f"session {idx} ({name}) lost messages"
        assert got[idx] == sorted(got[idx])
    for _, c, _ in sessions:
        await c.close()
    for c in senders.values():
        await c.close()


# -- one write per connection per loop turn (docs/performance.md#core-efficiency) ----------


def _write_syscalls(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/PID/io")


def test_replies_to_one_read_leave_in_one_write(core_proc: CoreProcess) -> None:
    """50 requests read at once are answered by one write, not 50 (the core's cost per
    message is mostly system calls). Counted by the kernel for the core's process."""
    if not Path("/proc/self/io").exists():
        missing("needs Linux's /proc/PID/io to count the core's write calls")
    assert core_proc.proc is not None
    pid = core_proc.proc.pid
    burst = b"".join(encode({"purpose": "ping", "id": i}) for i in range(50))
    with socket.create_connection((core_proc.host, core_proc.port), timeout=10) as s:
        before = _write_syscalls(pid)
        s.sendall(burst)
        decoder, got = FrameDecoder(), []
        while len(got) < 50:
            chunk = s.recv(65536)
            assert chunk, "the core closed the connection"
            got += decoder.feed(chunk)
        writes = _write_syscalls(pid) - before
    assert got == [{"purpose": "ping", "id": i, "ok": True} for i in range(50)]
    # TCP may deliver the burst in a few reads; each read's replies are one write.
    assert writes <= 5, f"{writes} write calls for 50 replies"


async def test_replies_of_the_turn_in_which_the_core_stops_are_sent(start_core: StartCore) -> None:
    """A request answered in the same loop turn as the stop still gets its reply."""
    core = await start_core()
    reader, writer = await asyncio.open_connection("127.0.0.1", core.port)
    await until(lambda: len(core.connections) == 1, what="the core sees the connection")
    conn = next(iter(core.connections))
    conn.data_received(encode({"purpose": "ping", "id": 1}))  # read in this turn...
    await core.stop()  # ...and the core stops before the turn's writes
    got = await asyncio.wait_for(reader.read(), 5)
    assert got == encode({"purpose": "ping", "id": 1, "ok": True})
    writer.close()


async def test_a_nul_character_is_refused_and_the_connection_goes_on(core: CoreServer) -> None:
    """NUL is not text (and PostgreSQL cannot store it): bad_request, on both stores, and
    another user's send in the same moment is not affected."""
    alice, bob = await RawClient.to(core), await RawClient.to(core)
    await alice.login("Alice")
    await bob.login("Bob")
    await alice.send({"purpose": "send_message", "id": 1, "to": "Bob", "text": "a\x00b"})
    await bob.send({"purpose": "send_message", "id": 2, "to": "Alice", "text": "fine"})
    refused, fine = await alice.recv(), await bob.recv()
    assert (refused["ok"], refused["error"]) == (False, "bad_request")
    assert "NUL" in refused["message"]
    assert fine["ok"] is True
    assert [m["text"] for m in (await alice.call("history", **{"with": "Bob"}))["messages"]] == [
        "fine"
    ]
