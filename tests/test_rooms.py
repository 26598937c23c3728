"""Rooms (docs/protocol.md#rooms) on ChatService directly, and their durability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import StartService
from core_helpers import Client
from waiting import until

from legacy_socket_server.chat import ChatService
from legacy_socket_server.protocol import FrameDecoder, encode
from legacy_socket_server.rooms import mentioned
from legacy_socket_server.store import HistoryStore


def logged(svc: ChatService, name: str) -> Client:
    c = Client(svc)
    c.login(name)
    return c


def room_of(client: Client, name: str) -> dict | None:
    return next((r for r in client.ok("rooms")["rooms"] if r["name"] == name), None)


async def test_every_user_starts_in_general(svc: ChatService) -> None:
    alice = logged(svc, "Alice")
    reply = alice.ok("rooms")
    assert reply["rooms"] == [
        {
            "name": "general",
            "private": False,
            "members": 3,
            "joined": True,
            "unread": 0,
            "mentions": 0,
        }
    ]
    assert isinstance(reply["cursor"], int)
    login = Client(svc).login("Bob")
    assert [r["name"] for r in login["rooms"]] == ["general"]


async def test_names_are_checked_and_lowercased(svc: ChatService) -> None:
    alice = logged(svc, "Alice")
    for bad in ["", "-x", "_x", "a b", "x" * 41, "é", "a.b", "#general"]:
        alice.err("create_room", "invalid_name", room=bad)
    alice.err("create_room", "bad_request", room=5)
    room = alice.ok("create_room", room="Proj-X_1")["room"]
    assert room == {
        "name": "proj-x_1",
        "private": False,
        "members": 1,
        "joined": True,
        "unread": 0,
        "mentions": 0,
    }
    alice.err("create_room", "room_exists", room="PROJ-x_1")
    alice.err("create_room", "room_exists", room="general")
    assert room_of(alice, "proj-x_1") is not None
    alice.err("create_room", "unknown_user", room="other", members=["Zed"])
    alice.err("create_room", "bad_request", room="other", members="Bob")


async def test_public_room_seen_and_joined_by_anyone(svc: ChatService) -> None:
    alice, bob = logged(svc, "Alice"), logged(svc, "Bob")
    bob.poll_events()
    alice.ok("create_room", room="study")
    events = bob.poll_events()
    seen = [e for e in events if e["type"] == "room"]
    assert seen and seen[0]["room"]["name"] == "study" and seen[0]["room"]["joined"] is False
    assert room_of(bob, "study")["joined"] is False
    bob.err("send_message", "not_a_member", room="study", text="hi")
    bob.err("history", "not_a_member", room="study")
    bob.err("room_members", "not_a_member", room="study")
    assert bob.ok("join_room", room="STUDY")["room"]["joined"] is True
    members = alice.ok("room_members", room="study")["members"]
    assert members == [{"username": "Alice", "online": True}, {"username": "Bob", "online": True}]
    joined = [e for e in alice.poll_events() if e["type"] == "member"]
    assert joined[-1] == {"type": "member", "room": "study", "username": "Bob", "joined": True}


async def test_private_room_does_not_exist_for_outsiders(svc: ChatService) -> None:
    alice, bob, charlie = logged(svc, "Alice"), logged(svc, "Bob"), logged(svc, "Charlie")
    charlie.poll_events()
    alice.ok("create_room", room="secret", private=True, members=["Bob"])
    assert all(e["type"] != "room" for e in charlie.poll_events())
    assert room_of(charlie, "secret") is None
    for purpose, fields in [
        ("join_room", {}),
        ("leave_room", {}),
        ("room_members", {}),
        ("add_member", {"username": "Charlie"}),
        ("send_message", {"text": "x"}),
        ("history", {}),
        ("read", {"up_to": 1}),
    ]:
        charlie.err(purpose, "unknown_room", room="secret", **fields)
        charlie.err(purpose, "unknown_room", room="never-made", **fields)
    charlie.err("create_room", "room_exists", room="secret")
    # A member may add someone; then it exists for them.
    bob.ok("add_member", room="secret", username="Charlie")
    added = [e for e in charlie.poll_events() if e["type"] == "room"]
    assert added[-1]["room"]["name"] == "secret" and added[-1]["room"]["joined"] is True
    assert room_of(charlie, "secret")["members"] == 3


async def test_to_and_room_together_or_neither_is_bad_request(svc: ChatService) -> None:
    alice = logged(svc, "Alice")
    alice.err("send_message", "bad_request", to="Bob", room="general", text="x")
    alice.err("send_message", "bad_request", text="x")
    alice.err("history", "bad_request", **{"with": "Bob", "room": "general"})
    alice.err("read", "bad_request", **{"with": "Bob", "room": "general", "up_to": 1})


async def test_room_message_reaches_every_member_once_with_sender(svc: ChatService) -> None:
    alice, bob, charlie = logged(svc, "Alice"), logged(svc, "Bob"), logged(svc, "Charlie")
    for c in (alice, bob, charlie):
        c.poll_events()
    msg = alice.ok("send_message", room="General", text="hello all", client_msg_id="m1")["message"]
    assert msg["room"] == "general" and msg["from"] == "Alice" and "to" not in msg
    for c in (alice, bob, charlie):
        got = [e for e in c.poll_events() if e["type"] == "message"]
        assert got == [{"type": "message", "message": msg}]
    # Safe retry.
    again = alice.ok("send_message", room="general", text="hello all", client_msg_id="m1")
    assert again["message"] == msg
    page = bob.ok("history", room="general")
    assert page == {"purpose": "history", "ok": True, "messages": [msg], "has_more": False}


async def test_one_encoding_for_all_members(svc: ChatService) -> None:
    """A room message's event is encoded once; every poll reply splices those bytes."""
    alice, bob = logged(svc, "Alice"), logged(svc, "Bob")
    bob.poll_events()
    alice.ok("send_message", room="general", text="ünïcode 👋")
    reply = bob.ok("poll")
    event = reply["events"][0]
    assert hasattr(event, "json")  # the shared, encoded event
    data = encode(reply)
    (decoded,) = FrameDecoder().feed(data)
    assert decoded == json.loads(json.dumps(reply))


async def test_unread_and_mentions(svc: ChatService) -> None:
    alice, bob = logged(svc, "Alice"), logged(svc, "Bob")
    texts = [
        "hi @bob",
        "@BOB!",
        "@bobby no",
        "@bob_x no",
        "@bob-x no",
        "mail bob@x no",
        "plain",
        "end @Bob",
    ]
    ids = [alice.ok("send_message", room="general", text=t)["message"]["id"] for t in texts]
    bob.ok("send_message", room="general", text="@bob myself")
    general = room_of(bob, "general")
    assert general["unread"] == len(texts) and general["mentions"] == 3
    # Alice's own messages are not unread for her; Bob's mention of himself is not either.
    assert room_of(alice, "general")["unread"] == 1
    bob.ok("read", room="general", up_to=ids[2])
    assert room_of(bob, "general")["unread"] == len(texts) - 3
    assert room_of(bob, "general")["mentions"] == 1
    bob.ok("read", room="general", up_to=0)  # never backwards
    assert room_of(bob, "general")["unread"] == len(texts) - 3


def test_mention_rule() -> None:
    users = {"bob": "Bob", "bob.x": "bob.x", "al": "Al"}
    assert mentioned("hi @bob.", users.get) == {"Bob"}
    assert mentioned("@bob.x: look", users.get) == {"bob.x", "Bob"}
    assert mentioned("@bobé @bob2 @al_ @al-", users.get) == set()
    assert mentioned("@AL", users.get) == {"Al"}


async def test_a_member_who_joins_late_sees_history_but_no_unread(svc: ChatService) -> None:
    alice, bob = logged(svc, "Alice"), logged(svc, "Bob")
    alice.ok("create_room", room="late")
    first = alice.ok("send_message", room="late", text="before you came")["message"]
    assert bob.ok("join_room", room="late")["room"]["unread"] == 0
    assert bob.ok("history", room="late")["messages"] == [first]
    alice.ok("send_message", room="late", text="after")
    assert room_of(bob, "late")["unread"] == 1


async def test_leaving_stops_events(svc: ChatService) -> None:
    alice, bob = logged(svc, "Alice"), logged(svc, "Bob")
    bob.ok("leave_room", room="general")
    events = bob.poll_events()
    assert {"type": "member", "room": "general", "username": "Bob", "joined": False} in events
    mine = [e for e in events if e["type"] == "room"]
    assert mine[-1]["room"]["joined"] is False
    alice.ok("send_message", room="general", text="you left")
    assert [e for e in bob.poll_events() if e["type"] == "message"] == []
    bob.err("leave_room", "not_a_member", room="general")
    assert room_of(bob, "general")["members"] == 2


async def test_rooms_and_markers_survive_a_restart(start_svc: StartService) -> None:
    svc = start_svc()
    alice, bob = logged(svc, "Alice"), logged(svc, "Bob")
    alice.ok("create_room", room="kept", private=True, members=["Bob"])
    m = alice.ok("send_message", room="kept", text="@Bob remember")["message"]
    alice.ok("send_message", room="kept", text="two")
    bob.ok("read", room="kept", up_to=m["id"])
    bob.ok("leave_room", room="general")
    svc.close()
    bob2 = logged(start_svc(), "Bob")
    rooms = {r["name"]: r for r in bob2.ok("rooms")["rooms"]}
    assert rooms["kept"]["private"] and rooms["kept"]["unread"] == 1
    assert rooms["kept"]["mentions"] == 0
    assert rooms["general"]["joined"] is False  # not put back by the restart
    assert len(bob2.ok("history", room="kept")["messages"]) == 2


async def test_an_old_data_directory_gains_general(data_dir: Path, start_svc: StartService) -> None:
    (data_dir / "history.json").write_text(
        '{"version": 1, "next_id": 2, "boot": 3,\n "read_markers": {},\n "messages": [\n'
        '  {"id": 1, "from": "Alice", "to": "Bob", "text": "old", "ts": "2026-01-01T00:00:00.000Z"}'
        "\n ]}\n"
    )
    bob = logged(start_svc(), "Bob")
    assert room_of(bob, "general")["members"] == 3
    assert bob.ok("history", **{"with": "Alice"})["messages"][0]["text"] == "old"


@pytest.mark.parametrize("purpose", ["create_room", "join_room", "leave_room", "room_members"])
async def test_room_purposes_need_a_login(svc: ChatService, purpose: str) -> None:
    Client(svc).err(purpose, "not_logged_in", room="general")


async def test_a_compaction_due_during_create_room_keeps_every_member(
    start_svc: StartService, data_dir: Path
) -> None:
    """The snapshot a compaction writes replaces the journal: it must not start before the
    whole new room is applied, or a crash after it loses the members after the first."""
    svc = start_svc(min_compact_bytes=1)
    alice = Client(svc)
    alice.login("Alice")
    svc.history._snapshot_size = 10**9  # no compaction yet
    alice.ok("send_message", to="Bob", text="x")
    await until(lambda: svc.history._child is None, what="an earlier compaction finishes")
    svc.history._snapshot_size = 0  # due at the next change
    assert svc.history.needs_compaction()
    created = alice.ok("create_room", room="ops", members=["Bob", "Charlie"])
    assert created["room"]["members"] == 3
    await until(lambda: svc.history._child is None, what="the compaction child finishes")
    after_crash = HistoryStore(data_dir).peek()  # what a restart without a clean stop loads
    assert after_crash.rooms["ops"]["members"] == {"Alice", "Bob", "Charlie"}
