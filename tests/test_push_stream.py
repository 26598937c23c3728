"""``poll`` with ``stream: true`` over real TCP (docs/protocol.md#push-stream).

The core keeps a streaming poll held after each answer: every batch of events
comes as one more reply with the same ``id``, with no poll in between.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvloop
from conftest import CoreProcess
from core_helpers import DEMO, RawClient
from waiting import until

from legacy_socket_server.client import CoreClient, CoreUnavailable, _PollStream
from legacy_socket_server.server import CoreServer


@pytest.fixture(params=["files", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every in-process core here runs on the file store and on PostgreSQL."""
    return request.param


def texts(reply: dict[str, Any]) -> list[str]:
    return [e["message"]["text"] for e in reply["events"] if e["type"] == "message"]


async def stream_replies(client: RawClient, rid: str, count: int) -> list[dict[str, Any]]:
    return [await client.recv_match(lambda m: m.get("id") == rid, timeout=10) for _ in range(count)]


async def test_a_stream_answers_every_event_without_a_new_poll(core: CoreServer) -> None:
    alice, bob = await RawClient.to(core), await RawClient.to(core)
    cursor = (await alice.login("Alice"))["cursor"]
    await bob.login("Bob")
    await alice.call("poll", cursor=cursor)  # Bob's presence: out of the way
    await alice.send({"purpose": "poll", "id": "s", "wait_ms": 30_000, "stream": True})
    got: list[str] = []
    cursors: list[int] = []
    for i in range(5):  # DMs and a room message, each sent after the last was seen
        if i == 2:
            await bob.call("send_message", room="general", text="room 2")
        else:
            await bob.call("send_message", to="Alice", text=f"dm {i}")
        reply = await alice.recv_match(lambda m: m.get("id") == "s")
        assert reply["ok"] is True and reply["stream"] is True
        got += texts(reply)
        cursors.append(reply["cursor"])
    assert got == ["dm 0", "dm 1", "room 2", "dm 3", "dm 4"]  # once each, in order
    assert cursors == sorted(cursors) and len(set(cursors)) == 5
    # The same cursor, polled plainly, gives nothing new: the stream kept it current.
    assert (await alice.call("poll", cursor=cursors[-1]))["events"] == []


async def test_events_beyond_one_reply_keep_coming_and_quiet_gives_keepalives(
    core: CoreServer,
) -> None:
    alice, bob = await RawClient.to(core), await RawClient.to(core)
    cursor = (await alice.login("Alice"))["cursor"]
    await bob.login("Bob")
    for i in range(550):  # more than one reply holds (500 events), within the send burst
        await bob.send({"purpose": "send_message", "id": i, "to": "Alice", "text": f"m{i}"})
    assert (await bob.recv_match(lambda m: m.get("id") == 549))["ok"]
    await alice.send(
        {"purpose": "poll", "id": "s", "cursor": cursor, "wait_ms": 300, "stream": True}
    )
    first, second = await stream_replies(alice, "s", 2)
    assert len(first["events"]) == 500  # one reply's bound; the rest follows unasked
    assert texts(first) + texts(second) == [f"m{i}" for i in range(550)]
    # Nothing more: after wait_ms an empty reply, and the stream goes on.
    quiet = await alice.recv_match(lambda m: m.get("id") == "s", timeout=5)
    assert quiet["events"] == [] and quiet["stream"] is True
    await bob.call("send_message", to="Alice", text="after the keepalive")
    assert texts(await alice.recv_match(lambda m: m.get("id") == "s")) == ["after the keepalive"]


async def test_a_new_poll_ends_the_stream(core: CoreServer) -> None:
    alice, bob = await RawClient.to(core), await RawClient.to(core)
    await alice.login("Alice")
    await bob.login("Bob")
    await alice.call("poll")
    await alice.send({"purpose": "poll", "id": "s", "wait_ms": 30_000, "stream": True})
    await alice.send({"purpose": "poll", "id": "plain", "wait_ms": 30_000})
    ended = await alice.recv_match(lambda m: m.get("id") == "s")
    assert ended["events"] == []
    await bob.call("send_message", to="Alice", text="to the plain poll")
    plain = await alice.recv_match(lambda m: m.get("id") == "plain")
    assert texts(plain) == ["to the plain poll"] and "stream" not in plain
    # The stream is over: the next message waits for a poll (and a ping passes it).
    await bob.call("send_message", to="Alice", text="nobody holds a poll")
    await alice.call("ping")
    assert not [m for m in alice.inbox if isinstance(m, dict) and m.get("id") in ("s", "plain")]


async def test_bad_stream_requests_are_bad_request(core: CoreServer) -> None:
    alice = await RawClient.to(core)
    await alice.login("Alice")
    for fields in ({"stream": True}, {"stream": True, "wait_ms": 0}, {"stream": "yes"}):
        reply = await alice.request("poll", **fields)
        assert reply["ok"] is False and reply["error"] == "bad_request", (fields, reply)
    assert (await alice.call("ping"))["ok"] is True


async def test_the_client_streams_without_sending_another_poll(core: CoreServer) -> None:
    alice = await CoreClient.connect(core.config.host, core.port)
    bob = await CoreClient.connect(core.config.host, core.port)
    login = await alice.login("Alice", DEMO["Alice"])
    await bob.login("Bob", DEMO["Bob"])
    seen: list[str] = []
    done = alice.stream_polls(login["cursor"], 25_000, lambda r: seen.extend(texts(r)), stream=True)
    stream = alice._stream
    assert stream is not None
    first_poll = stream.rid
    for i in range(20):
        await bob.send_message("Alice", f"n{i}")
    await until(lambda: len(seen) >= 20, what="20 messages through the stream")
    assert seen == [f"n{i}" for i in range(20)]
    assert stream.rid == first_poll  # every reply answered the one poll
    assert not done.done()
    await alice.close()
    await bob.close()


def test_a_reply_waiting_unread_behind_a_busy_loop_is_not_taken_for_a_dead_core(
    core_proc: CoreProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop runs due timers before it reads its sockets: after the loop was busy past
    a stream's deadline, the keepalive waiting in the socket must still count."""
    monkeypatch.setattr(_PollStream, "GRACE", 0.2)

    async def main() -> list[dict[str, Any]]:
        alice = await CoreClient.connect(core_proc.host, core_proc.port)
        bob = await CoreClient.connect(core_proc.host, core_proc.port)
        alice_cursor = (await alice.login("Alice", DEMO["Alice"]))["cursor"]
        bob_cursor = (await bob.login("Bob", DEMO["Bob"]))["cursor"]
        replies: list[dict[str, Any]] = []
        bobs: list[dict[str, Any]] = []

        def bob_reply(reply: dict[str, Any]) -> None:
            bobs.append(reply)
            if len(bobs) == 2:
                # Busy reading another connection (as with a storm of big replies):
                # Alice's keepalive arrives meanwhile and her 0.5 s deadline passes.
                time.sleep(1.0)

        done = alice.stream_polls(alice_cursor, 300, replies.append, stream=True)
        bob.stream_polls(bob_cursor, 200, bob_reply, stream=True)
        await until(lambda: len(replies) >= 4, what="keepalives after the busy spell")
        assert len(bobs) >= 2
        assert not done.done(), done.exception()
        await alice.close()
        await bob.close()
        return replies

    replies = uvloop.run(main())
    assert all(r["stream"] is True for r in replies)


async def test_a_core_that_goes_silent_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_PollStream, "GRACE", 0.2)
    peers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)  # reads nothing, answers nothing, never closes
        await reader.read(1 << 16)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await CoreClient.connect("127.0.0.1", port)
    done = client.stream_polls(0, 300, lambda r: None, stream=True)
    with pytest.raises(CoreUnavailable, match="no poll reply"):
        await asyncio.wait_for(done, 5)
    server.close()
    for w in peers:
        w.close()
