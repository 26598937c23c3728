"""Several cores on one PostgreSQL database (docs/scaling.md#several-cores): what one
core accepts reaches clients of the other, presence is the union of both, tokens
resume anywhere, and what only the database can decide (ids, a client_msg_id used
before, a room name) is decided once for all of them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from _pg_server import PgServer
from conftest import ROOT, StartCore, new_database
from core_helpers import RawClient, whole_history
from waiting import until

from legacy_socket_server.server import CoreServer


@pytest.fixture
async def two_cores(start_core: StartCore, pg_server: PgServer) -> tuple[CoreServer, CoreServer]:
    url = await new_database(pg_server)
    return await start_core(database_url=url), await start_core(database_url=url)


async def next_events(client: RawClient, cursor: int, want: Any) -> tuple[int, list[dict]]:
    """Poll from ``cursor`` until an event matching ``want`` arrives; (cursor, events)."""
    seen: list[dict[str, Any]] = []

    async def poll() -> bool:
        nonlocal cursor
        reply = await client.call("poll", cursor=cursor, wait_ms=2000)
        cursor = reply["cursor"]
        seen.extend(reply["events"])
        return any(want(e) for e in reply["events"])

    await until(poll, timeout=10, what=f"an event among {seen}")
    return cursor, seen


async def test_chat_and_presence_cross_cores(two_cores: tuple[CoreServer, CoreServer]) -> None:
    one, two = two_cores
    alice, bob = await RawClient.to(one), await RawClient.to(two)
    token = (await alice.login("Alice"))["token"]
    cursor = (await bob.login("Bob"))["cursor"]

    async def alice_online() -> bool:
        users = (await bob.call("users"))["users"]
        return {u["username"]: u["online"] for u in users}["Alice"]

    await until(alice_online, what="Alice online on the other core")

    # A direct message accepted by core one is an event on core two at once.
    sent = (await alice.call("send_message", to="Bob", text="over there ☕"))["message"]
    cursor, events = await next_events(
        bob, cursor, lambda e: e["type"] == "message" and e["message"] == sent
    )
    # Ids are the database's: they increase whichever core took the message.
    reply = (await bob.call("send_message", to="Alice", text="back"))["message"]
    room_msg = (await alice.call("send_message", room="general", text="all of us"))["message"]
    assert sent["id"] < reply["id"] < room_msg["id"]
    cursor, _ = await next_events(bob, cursor, lambda e: e.get("message") == room_msg)
    for client, peer in ((alice, "Bob"), (bob, "Alice")):
        ids = [m["id"] for m in await whole_history(client, peer)]
        assert ids == [sent["id"], reply["id"]]
    # Read markers made on one core count on the other. The cores agree as the change feed
    # brings each one the other's changes (docs/scaling.md#the-change-feed), not at the
    # instant of the commit: Bob's session on core one hears of the marker as a `read`
    # event, and core one's counts agree from then on.
    again = await RawClient.to(one)
    login = await again.login("Bob")
    assert {u["username"]: u["unread"] for u in login["users"]}["Alice"] == 1
    await bob.call("read", **{"with": "Alice"}, up_to=sent["id"])
    await next_events(
        again, login["cursor"], lambda e: e["type"] == "read" and e.get("with") == "Alice"
    )
    users = (await again.call("users"))["users"]
    assert {u["username"]: u["unread"] for u in users}["Alice"] == 0
    await again.call("exit")

    # The other core's cursor is not honoured but reset (documented), never misread.
    assert (await alice.call("poll", cursor=cursor))["reset"] is True

    # Alice leaves core one: offline on core two, and her token resumes on core two.
    await alice.close()
    cursor, _ = await next_events(
        bob,
        cursor,
        lambda e: e == {"type": "presence", "username": "Alice", "online": False},
    )
    moved = await RawClient.to(two)
    resumed = await moved.call("resume", token=token)
    assert resumed["username"] == "Alice"
    await next_events(
        bob, cursor, lambda e: e == {"type": "presence", "username": "Alice", "online": True}
    )


async def test_a_core_that_stops_takes_its_users_offline_elsewhere(
    two_cores: tuple[CoreServer, CoreServer],
) -> None:
    one, two = two_cores
    alice, bob = await RawClient.to(one), await RawClient.to(two)
    await alice.login("Alice")
    cursor = (await bob.login("Bob"))["cursor"]
    await one.stop()
    await next_events(
        bob, cursor, lambda e: e == {"type": "presence", "username": "Alice", "online": False}
    )
    assert {u["username"]: u["online"] for u in (await bob.call("users"))["users"]} == {
        "Alice": False,
        "Charlie": False,
    }


async def test_a_retry_on_the_other_core_is_the_same_message(
    two_cores: tuple[CoreServer, CoreServer],
) -> None:
    """A client whose core died before the reply resends on another: one message."""
    one, two = two_cores
    first, second = await RawClient.to(one), await RawClient.to(two)
    await first.login("Alice")
    await second.login("Alice")
    sent = (await first.call("send_message", to="Bob", text="once", client_msg_id="c-1"))["message"]
    again = await second.call("send_message", to="Bob", text="once", client_msg_id="c-1")
    assert again["message"] == sent
    bob = await RawClient.to(two)
    await bob.login("Bob")
    assert [m["text"] for m in await whole_history(bob, "Alice")] == ["once"]


async def test_a_room_name_is_taken_once_across_cores(
    two_cores: tuple[CoreServer, CoreServer],
) -> None:
    one, two = two_cores
    alice, bob = await RawClient.to(one), await RawClient.to(two)
    await alice.login("Alice")
    await bob.login("Bob")
    replies = await asyncio.gather(
        alice.request("create_room", room="ops", private=True),
        bob.request("create_room", room="ops"),
    )
    assert sorted(r["ok"] for r in replies) == [False, True], replies
    refused = next(r for r in replies if not r["ok"])
    assert refused["error"] == "room_exists"
    winner = alice if replies[0]["ok"] else bob
    loser = bob if winner is alice else alice
    # Both cores agree on the one room: the winner is its only member.
    for core in (one, two):
        await until(lambda core=core: "ops" in core.service._rooms, what="the room on both")
        room = core.service._rooms["ops"]
        assert room.members == {"Alice" if winner is alice else "Bob"}
    assert (await loser.request("send_message", room="ops", text="x"))["ok"] is False


async def test_the_clis_change_users_and_rooms_beside_running_cores(
    two_cores: tuple[CoreServer, CoreServer],
) -> None:
    """``users`` and ``rooms_cli`` with ``--database-url``: every running core hears of
    the change at once (a new user logs in anywhere; a member added is a member)."""
    one, two = two_cores
    url = one.config.database_url
    env = {**os.environ, "CHAT_DATABASE_URL": url or ""}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *args],
            env=env,
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = cli("legacy_socket_server.users", "add", "Dana", stdin="s3cret\n")
    assert added.returncode == 0, added.stderr
    assert cli("legacy_socket_server.users", "list").stdout.split() == [
        "Alice",
        "Bob",
        "Charlie",
        "Dana",
    ]
    for core in (one, two):
        await until(lambda core=core: core.service.users.exists("Dana"), what="Dana known")
        dana = await RawClient.to(core)
        await dana.login("Dana", "s3cret")
        rooms = {r["name"]: r["joined"] for r in (await dana.call("rooms"))["rooms"]}
        assert rooms == {"general": True}
    alice = await RawClient.to(one)
    await alice.login("Alice")
    await alice.call("create_room", room="ops", private=True)
    moved = cli("legacy_socket_server.rooms_cli", "add", "ops", "Dana")
    assert moved.returncode == 0 and "added Dana to ops" in moved.stdout, moved.stderr
    await until(lambda: "Dana" in member_of(two, "ops"), what="Dana in ops on the other core")
    listed = cli("legacy_socket_server.rooms_cli", "list").stdout
    assert "ops\tprivate\t2 members" in listed
    removed = cli("legacy_socket_server.users", "remove", "Dana")
    assert removed.returncode == 0, removed.stderr
    await until(lambda: not two.service.users.exists("Dana"), what="Dana gone everywhere")
    await until(lambda: "Dana" not in member_of(one, "ops"), what="Dana out of ops")


def member_of(core: CoreServer, room: str) -> set[str]:
    found = core.service._rooms.get(room)
    return found.members if found is not None else set()


async def test_made_up_tokens_cost_no_database_query(
    two_cores: tuple[CoreServer, CoreServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume with an unknown token asks the database (another core may have issued it a
    moment ago), but only for what could be a token: garbage is refused at once."""
    one, _ = two_cores
    asked: list[str] = []
    real = one.service.tokens._lookup

    async def counting(digest: str) -> Any:
        asked.append(digest)
        return await real(digest)

    monkeypatch.setattr(one.service.tokens, "_lookup", counting)
    client = await RawClient.to(one)
    for token in ("x", "not a token at all", "A" * 44):
        assert (await client.request("resume", token=token))["error"] == "invalid_token"
    assert asked == []
    refused = await client.request("resume", token="A" * 43)  # the right shape: looked up
    assert refused["error"] == "invalid_token" and len(asked) == 1
