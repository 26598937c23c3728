"""Rooms over real TCP against the core process: the rules a black-box client sees, and
membership and read markers surviving ``kill -9`` (with the files' journal, or PostgreSQL)."""

from __future__ import annotations

import pytest
from conftest import DEMO_USERS, CoreProcess
from core_helpers import RawClient


@pytest.fixture(params=["files", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every test here runs against the file store and PostgreSQL (docs/scaling.md)."""
    return request.param


async def logged(core: CoreProcess, name: str) -> RawClient:
    client = await RawClient.connect(core.host, core.port)
    await client.call("login", username=name, password=DEMO_USERS[name])
    return client


async def test_room_rules_over_tcp(core_proc: CoreProcess) -> None:
    alice, bob, charlie = [await logged(core_proc, n) for n in ("Alice", "Bob", "Charlie")]
    created = await alice.call("create_room", room="Ops", private=True, members=["Bob"])
    assert created["room"]["name"] == "ops" and created["room"]["members"] == 2
    for purpose, fields in [
        ("join_room", {}),
        ("room_members", {}),
        ("send_message", {"text": "x"}),
        ("history", {}),
        ("read", {"up_to": 1}),
        ("leave_room", {}),
        ("add_member", {"username": "Charlie"}),
    ]:
        reply = await charlie.request(purpose, room="ops", **fields)
        assert reply["error"] == "unknown_room", (purpose, reply)
    assert (await charlie.request("create_room", room="ops"))["error"] == "room_exists"
    both = await alice.request("send_message", room="ops", to="Bob", text="x")
    assert both["error"] == "bad_request"
    sent = (await alice.call("send_message", room="ops", text="hi @bob"))["message"]
    poll = await bob.call("poll")
    assert {"type": "message", "message": sent} in poll["events"]
    rooms = {r["name"]: r for r in (await bob.call("rooms"))["rooms"]}
    assert rooms["ops"]["unread"] == 1 and rooms["ops"]["mentions"] == 1
    for c in (alice, bob, charlie):
        await c.close()


async def test_membership_and_markers_survive_kill_9(core_proc: CoreProcess) -> None:
    alice, bob = await logged(core_proc, "Alice"), await logged(core_proc, "Bob")
    await alice.call("create_room", room="keep", private=True, members=["Bob"])
    first = (await alice.call("send_message", room="keep", text="one"))["message"]
    await alice.call("send_message", room="keep", text="two @Bob")
    await bob.call("read", room="keep", up_to=first["id"])
    await bob.call("leave_room", room="general")
    await alice.call("join_room", room="general")  # already in: nothing changes
    core_proc.kill()  # no clean shutdown, no compaction: the journal alone
    core_proc.start()
    bob2 = await logged(core_proc, "Bob")
    rooms = {r["name"]: r for r in (await bob2.call("rooms"))["rooms"]}
    assert rooms["keep"]["joined"] and rooms["keep"]["private"]
    assert rooms["keep"]["unread"] == 1 and rooms["keep"]["mentions"] == 1
    assert rooms["general"]["joined"] is False and rooms["general"]["members"] == 2
    history = (await bob2.call("history", room="keep"))["messages"]
    assert [m["text"] for m in history] == ["one", "two @Bob"]
    await bob2.close()
