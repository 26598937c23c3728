"""Rooms in the desktop model (ChatClient) without a display, against a real core subprocess.

Other members are plain blocking clients (``Peer``); the model is ticked by
``drive`` until what a person would see is true (docs/protocol.md#rooms).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import DEMO_USERS
from desktop_helpers import Peer, drive, logged_in
from waiting import wait_for

from legacy_socket_server.desktop.model import ChatClient, normalise_room_name
from legacy_socket_server.desktop.window import window_title


def room_send(peer: Peer, room: str, text: str) -> dict[str, Any]:
    return peer.call("send_message", room=room, text=text)["message"]


def room_history(peer: Peer, room: str) -> list[dict[str, Any]]:
    return peer.call("history", room=room, limit=200)["messages"]


def server_room(host: str, port: int, name: str, room: str) -> dict[str, Any] | None:
    """``room`` as the core shows it to a fresh session of ``name`` (None: not visible)."""
    probe = Peer(host, port)
    try:
        rooms = probe.login(name, DEMO_USERS[name])["rooms"]
        return next((r for r in rooms if r["name"] == room), None)
    finally:
        probe.close()


class Outcome:
    """A ``done(ok, message)`` callback that remembers how a room action ended."""

    def __init__(self) -> None:
        self.result: tuple[bool, str | None] | None = None

    def __call__(self, ok: bool, message: str | None) -> None:
        self.result = (ok, message)


def finish(client: ChatClient, action: Any, *args: Any, **kwargs: Any) -> tuple[bool, str | None]:
    """Run a model room action and tick until the core has answered it."""
    outcome = Outcome()
    assert action(*args, done=outcome, **kwargs) is None
    drive(client, lambda: outcome.result is not None, what=f"{action.__name__} answered")
    assert outcome.result is not None
    return outcome.result


@pytest.fixture
def charlie_peer(core_proc) -> Iterator[Peer]:
    peer = Peer(core_proc.host, core_proc.port)
    peer.login("Charlie", DEMO_USERS["Charlie"])
    yield peer
    peer.close()


def test_general_is_listed_and_joined(core_proc) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    [general] = alice.sorted_rooms()
    assert (general.name, general.joined, general.private) == ("general", True, False)
    assert general.members == 3 and general.unread == 0 and general.mentions == 0
    assert alice.total_unread == 0


def test_room_message_counts_unread_and_mentions_then_reads(core_proc, bob_peer) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    changes: set[str] = set()

    def seen(unread: int) -> bool:
        changes.update(alice.tick())
        return alice.rooms["general"].unread == unread

    room_send(bob_peer, "general", "Morning all")
    wait_for(lambda: seen(1), what="one unread in general")
    assert alice.rooms["general"].mentions == 0
    assert "bell" not in changes  # a room rings only when it calls you
    # Mentions: any case, the name ends or is followed by a non-name character.
    room_send(bob_peer, "general", "@alice can you share the slides?")
    room_send(bob_peer, "general", "@alicex is someone else; so is @alice_b")
    room_send(bob_peer, "general", "thanks @ALICE.")
    wait_for(lambda: seen(4), what="four unread in general")
    assert alice.rooms["general"].mentions == 2
    assert "bell" in changes
    assert alice.total_unread == 4 and alice.total_mentions == 2
    # The model's counts are the core's.
    view = server_room(core_proc.host, core_proc.port, "Alice", "general")
    assert view is not None and (view["unread"], view["mentions"]) == (4, 2)
    # Direct unread adds to the same total, which the window title shows.
    bob_peer.send("Alice", "and a direct word")
    drive(alice, lambda: alice.users["Bob"].unread == 1, what="direct unread")
    assert alice.total_unread == 5
    assert window_title(alice) == "Team Chat — Alice — 5 unread, 2 mentions"

    # Opening the room shows each sender and marks it read on the server.
    assert alice.open_room("general")
    drive(alice, lambda: alice.messages and not alice.conv.loading, what="room history")
    assert [(m["from"], m["room"]) for m in alice.messages] == [("Bob", "general")] * 4
    assert [alice.mentions_me(m) for m in alice.messages] == [False, True, False, True]
    assert alice.rooms["general"].unread == 0 and alice.rooms["general"].mentions == 0
    assert alice.room == "general" and alice.peer is None
    assert window_title(alice) == "Team Chat — Alice — 1 unread"
    drive(
        alice,
        lambda: server_room(core_proc.host, core_proc.port, "Alice", "general")["unread"] == 0,
        what="the room's read marker",
    )

    # Live: another member's message appears with its sender and stays read.
    charlie = Peer(core_proc.host, core_proc.port)
    charlie.login("Charlie", "789")
    room_send(charlie, "general", "hi from Charlie, @Alice")
    drive(alice, lambda: alice.messages[-1]["from"] == "Charlie", what="Charlie's message")
    assert alice.rooms["general"].unread == 0
    assert alice.mentions_me(alice.messages[-1])
    # Alice answers in the room; Bob and Charlie both have it.
    assert alice.send("on it ✓")
    drive(alice, lambda: alice.pending_count == 0, what="room send acknowledged")
    assert room_history(bob_peer, "general")[-1]["text"] == "on it ✓"
    assert alice.messages[-1]["from"] == "Alice"
    assert not alice.mentions_me({"room": "general", "from": "Alice", "text": "@Alice"})
    charlie.close()


def test_counts_start_from_the_login_list(core_proc, bob_peer) -> None:
    room_send(bob_peer, "general", "before Alice logs in, @Alice")
    room_send(bob_peer, "general", "another one")
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    general = alice.rooms["general"]
    assert (general.unread, general.mentions) == (2, 1)
    room_send(bob_peer, "general", "and @alice again")
    drive(alice, lambda: alice.rooms["general"].unread == 3, what="the live one on top")
    assert alice.rooms["general"].mentions == 2

    # Another session of Alice reads the room: the core's read event brings a fresh,
    # exact list (no double counting of what the list already holds).
    other = Peer(core_proc.host, core_proc.port)
    other.login("Alice", "123")
    newest = room_history(other, "general")[-1]["id"]
    other.call("read", room="general", up_to=newest)
    drive(alice, lambda: alice.rooms["general"].unread == 0, what="read in another session")
    assert alice.rooms["general"].mentions == 0
    room_send(bob_peer, "general", "after the read")
    drive(alice, lambda: alice.rooms["general"].unread == 1, what="one more")
    other.close()


def test_create_join_leave_add_and_list_members(core_proc, bob_peer, charlie_peer) -> None:
    host, port = core_proc.host, core_proc.port
    alice = logged_in(host, port, "Alice", "123")

    # A bad name is refused before asking the core; a good one in any case is lowercased.
    assert "a-z" in alice.create_room("no spaces please")
    assert normalise_room_name(" Design ") == "design"
    ok, _ = finish(alice, alice.create_room, "Design", members=["Bob"])
    assert ok
    drive(alice, lambda: alice.rooms.get("design") and alice.rooms["design"].members == 2)
    assert alice.rooms["design"].joined and not alice.rooms["design"].private
    ok, message = finish(alice, alice.create_room, "design")
    assert not ok and "exists" in message
    ok, message = finish(alice, alice.create_room, "other", members=["Zed"])
    assert not ok and "Zed" in message
    assert server_room(host, port, "Bob", "design")["joined"] is True

    # Charlie sees the public room and joins it: Alice's count follows (member event).
    charlie_peer.call("join_room", room="design")
    drive(alice, lambda: alice.rooms["design"].members == 3, what="Charlie joining")
    ok, _ = finish(alice, alice.load_members, "design")
    assert ok
    assert alice.member_list("design") == [
        {"username": "Alice", "online": True},
        {"username": "Bob", "online": True},
        {"username": "Charlie", "online": True},
    ]
    # The list stays live: Charlie goes offline, then leaves.
    charlie_peer.call("exit")
    drive(alice, lambda: not alice.member_list("design")[2]["online"], what="Charlie offline")
    other = Peer(host, port)
    other.login("Charlie", "789")
    other.call("leave_room", room="design")
    drive(alice, lambda: alice.rooms["design"].members == 2, what="Charlie leaving")
    assert [p["username"] for p in alice.member_list("design")] == ["Alice", "Bob"]

    # A private room: Alice adds Charlie; an unknown name is refused.
    ok, _ = finish(alice, alice.create_room, "secret", private=True)
    assert ok
    ok, _ = finish(alice, alice.add_member, "secret", "Charlie")
    assert ok
    drive(alice, lambda: alice.rooms["secret"].members == 2, what="Charlie added")
    assert server_room(host, port, "Charlie", "secret")["joined"] is True
    assert server_room(host, port, "Bob", "secret") is None
    ok, message = finish(alice, alice.add_member, "secret", "Zed")
    assert not ok and "Zed" in message

    # Leaving: a public room stays listed (to join again), a private one disappears,
    # and an open room's conversation closes.
    assert alice.open_room("design")
    drive(alice, lambda: not alice.conv.loading)
    ok, _ = finish(alice, alice.leave_room, "design")
    assert ok and alice.conv is None
    drive(alice, lambda: not alice.rooms["design"].joined, what="design left")
    assert alice.rooms["design"].members == 1
    assert [r.name for r in alice.public_rooms_to_join()] == ["design"]
    ok, _ = finish(alice, alice.leave_room, "secret")
    assert ok
    drive(alice, lambda: "secret" not in alice.rooms, what="secret gone")
    assert server_room(host, port, "Alice", "secret") is None

    # A public room someone else creates shows up to join, and joining works.
    bob_peer.call("create_room", room="ops")
    drive(alice, lambda: "ops" in alice.rooms, what="Bob's new room")
    assert not alice.rooms["ops"].joined and alice.rooms["ops"].members == 1
    assert [r.name for r in alice.public_rooms_to_join()] == ["design", "ops"]
    ok, _ = finish(alice, alice.join_room, "ops")
    assert ok
    drive(alice, lambda: alice.rooms["ops"].joined and alice.rooms["ops"].members == 2)
    assert alice.open_room("ops")
    other.close()


def test_added_to_a_private_room_by_someone_else(core_proc, bob_peer) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    assert "hidden" not in alice.rooms
    bob_peer.call("create_room", room="hidden", private=True, members=["Alice"])
    drive(alice, lambda: "hidden" in alice.rooms, what="the room event")
    hidden = alice.rooms["hidden"]
    assert hidden.joined and hidden.private and hidden.members == 2
    room_send(bob_peer, "hidden", "just us, @Alice")
    drive(alice, lambda: alice.rooms["hidden"].mentions == 1, what="the mention")
    assert alice.rooms["hidden"].unread == 1
    assert [r.name for r in alice.sorted_rooms()] == ["general", "hidden"]


def test_room_survives_a_core_restart_without_doubles(core_proc, bob_peer) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    assert alice.open_room("general")
    drive(alice, lambda: not alice.conv.loading, what="room history")
    alice.set_draft("#general", "half a thought")
    assert alice.send("before the restart")
    drive(alice, lambda: alice.pending_count == 0, what="first send")
    bob_peer.close()
    core_proc.kill()
    drive(alice, lambda: alice.phase == "reconnecting", what="reconnecting")
    assert alice.send("typed while offline")
    core_proc.start()
    drive(alice, lambda: alice.phase == "ready" and alice.pending_count == 0, timeout=30)
    drive(alice, lambda: not alice.conv.loading, what="reload")
    bob = Peer(core_proc.host, core_proc.port)
    bob.login("Bob", "456")
    texts = [m["text"] for m in room_history(bob, "general")]
    assert texts == ["before the restart", "typed while offline"]
    assert [m["text"] for m in alice.visible_messages()] == texts
    assert alice.drafts == {"#general": "half a thought"}
    room_send(bob, "general", "welcome back @alice")
    drive(alice, lambda: alice.messages[-1]["from"] == "Bob", what="live after resume")
    assert alice.rooms["general"].unread == 0  # open: read at once
    bob.close()
