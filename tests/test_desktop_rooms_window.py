"""Rooms in the real desktop window under Xvfb, by keyboard alone (xdotool key events).

The harness (a private Xvfb, ``chatapp.py`` as a subprocess, its state dump)
is the one of tests/test_desktop_window.py; without Xvfb/xdotool/ImageMagick
these tests skip on a laptop and fail in CI (``require_tool``).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import test_desktop_window as harness
from conftest import DEMO_USERS, ROOT
from desktop_helpers import Peer
from test_desktop_window import DesktopApp
from waiting import wait_for

# The window harness's fixtures: a private Xvfb and chatapp.py processes on it.
xdisplay = harness.xdisplay
make_app = harness.make_app


def room_send(peer: Peer, room: str, text: str) -> dict[str, Any]:
    return peer.call("send_message", room=room, text=text)["message"]


def room_texts(peer: Peer, room: str) -> list[str]:
    return [m["text"] for m in peer.call("history", room=room, limit=200)["messages"]]


def room(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in state["rooms"] if r["name"] == name)


def last(state: dict[str, Any]) -> dict[str, Any]:
    return state["messages"][-1] if state.get("messages") else {}


def chat_ready(app: DesktopApp) -> dict[str, Any]:
    app.log_in("Alice", DEMO_USERS["Alice"])
    return app.wait_state(
        lambda s: s.get("screen") == "chat" and s["focus"] == "users", "the chat screen"
    )


def test_open_general_send_and_see_senders_by_keyboard(
    core_proc, bob_peer, make_app, tmp_path
) -> None:
    charlie = Peer(core_proc.host, core_proc.port)
    charlie.login("Charlie", DEMO_USERS["Charlie"])
    app = make_app(core_proc.host, core_proc.port)
    state = chat_ready(app)
    assert [r["name"] for r in state["rooms"]] == ["general"]
    assert state["sidebar"] == "user:Bob"  # the cursor starts on the first person

    # Up crosses from People into Rooms; Enter opens the room, the composer has the focus.
    app.key("Up")
    app.wait_state(lambda s: s["sidebar"] == "room:general", "the cursor on general")
    app.key("Return")
    state = app.wait_state(
        lambda s: s["room"] == "general" and s["focus"] == "entry" and not s["loading"],
        "general open",
    )
    assert state["header"] == "general 3 members · public room"
    assert "Ctrl+M members" in state["hint"]

    app.type("Morning all! Agenda is in the doc.")
    app.key("Return")
    wait_for(
        lambda: room_texts(bob_peer, "general") == ["Morning all! Agenda is in the doc."],
        what="the core to store Alice's room message",
    )
    app.wait_state(lambda s: s["pending"] == 0 and s["composer"] == "", "the send acknowledged")

    # Other members: each message shows its sender; one calls Alice and is highlighted.
    room_send(bob_peer, "general", "Thanks! I added the demo numbers.")
    room_send(charlie, "general", "@alice can you share the slides before three?")
    room_send(bob_peer, "general", "Looks good to me 👍")
    state = app.wait_state(lambda s: last(s).get("text") == "Looks good to me 👍", "replies")
    shown = [(m["from"], m["mention"]) for m in state["messages"]]
    assert shown == [("Alice", False), ("Bob", False), ("Charlie", True), ("Bob", False)]
    assert room(state, "general")["unread"] == 0 and state["title"] == "Team Chat — Alice"

    # Meanwhile Bob adds Alice to a room and calls her there; Charlie opens a public
    # room she is not in. The sidebar lists joined rooms first, each with its counts.
    bob_peer.call("create_room", room="design", members=["Alice", "Charlie"])
    room_send(bob_peer, "design", "@Alice the mockups are ready for review")
    room_send(bob_peer, "design", "Feedback by Friday, please.")
    charlie.call("create_room", room="random")
    state = app.wait_state(
        lambda s: (
            [(r["name"], r["joined"], r["unread"], r["mentions"]) for r in s["rooms"]]
            == [("design", True, 2, 1), ("general", True, 0, 0), ("random", False, 0, 0)]
        ),
        "the other rooms in the sidebar",
    )
    assert state["title"] == "Team Chat — Alice — 2 unread, 1 mention"
    app.type("Sure, sending them now")
    app.wait_state(lambda s: s["composer"] == "Sure, sending them now", "the typed text")
    shot = app.screenshot("rooms.png")
    if os.environ.get("CHAT_UPDATE_SCREENSHOT"):  # refresh the README's picture
        shutil.copy(shot, ROOT / "docs" / "desktop-rooms.png")
    app.key("Return")
    wait_for(
        lambda: room_texts(bob_peer, "general")[-1] == "Sure, sending them now",
        what="the second message",
    )

    # Ctrl+M lists the members with online dots; Esc closes the list.
    app.key("ctrl+m")
    state = app.wait_state(
        lambda s: s["sheet"] == "members" and s["room_members"], "the member list"
    )
    assert state["room_members"] == [
        {"username": "Alice", "online": True},
        {"username": "Bob", "online": True},
        {"username": "Charlie", "online": True},
    ]
    app.screenshot("members.png")
    charlie.call("exit")
    app.wait_state(
        lambda s: s["room_members"][2] == {"username": "Charlie", "online": False},
        "Charlie's dot going grey",
    )
    app.key("Escape")
    app.wait_state(lambda s: s["sheet"] is None and s["focus"] == "entry", "back to typing")

    # While Alice is elsewhere, a room mention counts in the sidebar and the title.
    app.key("Escape")
    app.wait_state(lambda s: s["focus"] == "users" and s["sidebar"] == "room:general", "list")
    app.key("Down", "Down", "Return")
    app.wait_state(lambda s: s["peer"] == "Bob", "Bob open")
    room_send(bob_peer, "general", "@Alice one more thing")
    state = app.wait_state(lambda s: room(s, "general")["mentions"] == 1, "the mention counted")
    assert room(state, "general")["unread"] == 1
    assert state["title"] == "Team Chat — Alice — 3 unread, 2 mentions"
    app.screenshot("mention-unread.png")

    # Up from People crosses back into Rooms; Enter on a room Alice is not in joins it.
    app.key("Escape", "Up", "Return")
    state = app.wait_state(lambda s: s["room"] == "random" and s["focus"] == "entry", "random")
    assert room(state, "random")["joined"] is True and room(state, "random")["members"] == 2
    charlie.close()


def test_create_leave_and_join_rooms_by_keyboard(core_proc, bob_peer, make_app) -> None:
    app = make_app(core_proc.host, core_proc.port)
    chat_ready(app)

    # Ctrl+N: name, private or not, people to add (Space picks the one under the cursor).
    app.key("ctrl+n")
    app.wait_state(lambda s: s["sheet"] == "new_room" and s["focus"] == "new_room:name", "form")
    app.key("Return")  # no name yet: the sheet says what a name may be
    app.wait_state(lambda s: "a-z" in (s["sheet_message"] or ""), "the name rule")
    app.type("Design")
    app.key("Tab")
    app.wait_state(lambda s: s["focus"] == "new_room:private", "Tab to Private")
    app.key("Tab")
    app.wait_state(lambda s: s["focus"] == "new_room:members", "Tab to the people list")
    app.key("space")  # Bob, the first name
    app.screenshot("new-room.png")
    app.key("Return")
    state = app.wait_state(
        lambda s: s["sheet"] is None and s["room"] == "design" and s["focus"] == "entry",
        "the new room open",
    )
    design = next(r for r in state["rooms"] if r["name"] == "design")
    assert design == {
        "name": "design", "private": False, "members": 2, "joined": True, "unread": 0,
        "mentions": 0,
    }  # fmt: skip
    bob_rooms = {r["name"]: r for r in bob_peer.call("rooms")["rooms"]}
    assert bob_rooms["design"]["joined"] is True

    # The same name again: the core's refusal shows in the sheet, Esc leaves it.
    app.key("ctrl+n")
    app.wait_state(lambda s: s["focus"] == "new_room:name", "the form again")
    app.type("design")
    app.key("Return")
    app.wait_state(lambda s: "exists" in (s["sheet_message"] or ""), "room_exists")
    app.key("Escape")
    app.wait_state(lambda s: s["sheet"] is None and s["focus"] == "entry", "form closed")

    # Ctrl+L asks first; Esc keeps the room, Enter leaves it.
    app.key("ctrl+l")
    app.wait_state(lambda s: s["sheet"] == "leave" and s["focus"] == "leave:action", "confirm")
    app.key("Escape")
    app.wait_state(lambda s: s["sheet"] is None and s["room"] == "design", "still in design")
    app.key("ctrl+l")
    app.wait_state(lambda s: s["sheet"] == "leave", "confirm again")
    app.screenshot("leave.png")
    app.key("Return")
    state = app.wait_state(
        lambda s: s["sheet"] is None and s["room"] is None and s["focus"] == "users", "left"
    )
    assert next(r for r in state["rooms"] if r["name"] == "design")["joined"] is False
    wait_for(
        lambda: {r["name"]: r for r in bob_peer.call("rooms")["rooms"]}["design"]["members"] == 1,
        what="the core to see Alice leave",
    )

    # Ctrl+J lists public rooms not joined; Enter joins and opens one.
    app.key("ctrl+j")
    app.wait_state(lambda s: s["sheet"] == "browse" and s["focus"] == "browse:rooms", "browse")
    app.screenshot("browse.png")
    app.key("Return")
    state = app.wait_state(
        lambda s: s["sheet"] is None and s["room"] == "design" and s["focus"] == "entry",
        "design joined again",
    )
    assert next(r for r in state["rooms"] if r["name"] == "design")["joined"] is True
