"""docs/protocol.md#events-and-cursors on ChatService directly: polls, presence, resume, exit."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import StartService
from core_helpers import Client
from waiting import until

from legacy_socket_server import events
from legacy_socket_server.chat import ChatService
from legacy_socket_server.protocol import encode
from legacy_socket_server.users import UserStore

# -- poll and cursors ---------------------------------------------------------------------


async def test_poll_same_cursor_same_events(svc: ChatService) -> None:
    a, b = Client(svc), Client(svc)
    cur = a.login("Alice")["cursor"]
    b.login("Bob")
    m = b.send("Alice", "hello")
    first = a.ok("poll", cursor=cur)
    assert first["events"] == [
        {"type": "presence", "username": "Bob", "online": True},
        {"type": "message", "message": m},
    ]
    again = a.ok("poll", cursor=cur)
    assert again["events"] == first["events"] and again["cursor"] == first["cursor"]
    assert "reset" not in first
    assert a.ok("poll", cursor=first["cursor"])["events"] == []
    # The sender's own session sees its message too (sent by this user).
    assert b.poll_events() == [{"type": "message", "message": m}]


async def test_poll_without_cursor_continues(svc: ChatService) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    texts = []
    for i in range(3):
        b.send("Alice", f"t{i}")
        evs = a.poll_events()
        texts += [e["message"]["text"] for e in evs if e["type"] == "message"]
    assert texts == ["t0", "t1", "t2"]
    assert a.poll_events() == []


async def test_poll_reset_cases(svc: ChatService, start_svc: StartService) -> None:
    a = Client(svc)
    login = a.login("Alice")
    cur = login["cursor"]
    for bad in [cur + 1000, 0, 1, (cur >> 32) + 1 << 32 | 5]:
        r = a.ok("poll", cursor=bad)
        assert r["reset"] is True and r["events"] == [], bad
        assert isinstance(r["cursor"], int)
        # The returned cursor is good.
        assert "reset" not in a.ok("poll", cursor=r["cursor"])
    # A cursor from before a restart is reset.
    svc.close()
    svc2 = start_svc()
    a2 = Client(svc2)
    new = a2.login("Alice")["cursor"]
    assert new != cur
    assert a2.ok("poll", cursor=cur)["reset"] is True


async def test_held_poll_answers_at_once_unless_nothing_follows_its_cursor(
    svc: ChatService,
) -> None:
    """A poll with ``wait_ms`` is held only when nothing is new after a cursor of this run
    (the held poll's O(1) check, docs/performance.md#core-efficiency); otherwise it is
    answered at once, as without ``wait_ms``."""
    a, b = Client(svc), Client(svc)
    cur = a.login("Alice")["cursor"]
    b.login("Bob")  # a presence event after ``cur``
    presence = a.ok("poll", cursor=cur, wait_ms=20_000)
    assert presence["events"] == [{"type": "presence", "username": "Bob", "online": True}]
    now = presence["cursor"]
    for bad in [now + 1000, 0, 1, (now >> 32) + 1 << 32 | 5]:
        r = a.ok("poll", cursor=bad, wait_ms=20_000)
        assert r["reset"] is True and r["events"] == [], bad
    m = b.send("Alice", "hi")
    assert a.ok("poll", cursor=now, wait_ms=20_000)["events"] == [{"type": "message", "message": m}]
    later = a.ok("poll", cursor=now)["cursor"]
    assert a.req("poll", cursor=later, wait_ms=20_000) is None  # held: nothing new
    m2 = b.send("Alice", "again")
    assert a.out[-1]["events"] == [{"type": "message", "message": m2}]


async def test_poll_reset_when_log_trimmed(
    monkeypatch: pytest.MonkeyPatch, start_svc: StartService
) -> None:
    monkeypatch.setattr(events, "LOG_KEEP", 5)
    svc = start_svc()
    a, b = Client(svc), Client(svc)
    cur = a.login("Alice")["cursor"]
    b.login("Bob")
    for i in range(30):
        b.send("Alice", f"{i}")
    r = a.ok("poll", cursor=cur)
    assert r["reset"] is True and r["events"] == []
    b.send("Alice", "fresh")
    evs = a.poll_events(cursor=r["cursor"])
    assert [e["message"]["text"] for e in evs] == ["fresh"]


@pytest.mark.parametrize(
    "fields",
    [
        {"cursor": "1"},
        {"cursor": -1},
        {"cursor": 1.5},
        {"wait_ms": 30_001},
        {"wait_ms": -1},
        {"wait_ms": "10"},
        {"cursor": True},
    ],
)
async def test_poll_bad_fields(svc: ChatService, fields: dict[str, Any]) -> None:
    a = Client(svc)
    a.login("Alice")
    a.err("poll", "bad_request", **fields)


def message_ids(replies: list[dict[str, Any]]) -> list[int]:
    return [e["message"]["id"] for r in replies for e in r["events"] if e["type"] == "message"]


async def test_poll_batches_are_bounded_and_lose_nothing(start_svc: StartService) -> None:
    svc = start_svc(send_burst=2000)
    a, b = Client(svc), Client(svc)
    cur = a.login("Alice")["cursor"]
    b.login("Bob")
    sent = [b.send("Alice", f"n{i}")["id"] for i in range(1200)]
    replies = a.poll_to_the_end(cur)
    assert message_ids(replies) == sent
    sizes = [len(r["events"]) for r in replies[:-1]]
    assert all(s >= 100 for s in sizes[:-1]) and max(sizes) < 1200


async def test_poll_cut_to_frame_size(start_svc: StartService) -> None:
    svc = start_svc(max_frame_bytes=50_000)
    a, b = Client(svc), Client(svc)
    cur = a.login("Alice")["cursor"]
    b.login("Bob")
    sent = [b.send("Alice", "y" * 9_000)["id"] for _ in range(20)]
    replies = a.poll_to_the_end(cur, id="i" * 64)
    assert all(len(encode(r)) <= 50_000 + 9 for r in replies)
    assert len(replies) > 3 and message_ids(replies) == sent


async def test_long_poll_wakes_on_event(svc: ChatService) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    a.poll_events()
    assert a.req("poll", wait_ms=30_000, id="held") is None
    assert a.out == []
    m = b.send("Alice", "wake up")
    # Answered at once: by the time the send returns, long before the 30 s are up.
    assert a.out == [
        {
            "purpose": "poll",
            "id": "held",
            "ok": True,
            "cursor": a.out[0]["cursor"],
            "events": [{"type": "message", "message": m}],
        }
    ]
    assert a.poll_events() == []
    # Only one reply, even later.
    b.send("Alice", "again")
    assert len(a.out) == 1


async def test_send_without_echo(svc: ChatService) -> None:
    """``echo: false``: the sending session has its message in the reply and no event of
    it; the recipient and the sender's other sessions get the event as always."""
    a, a2, b = Client(svc), Client(svc), Client(svc)
    token = a.login("Alice")["token"]
    a2.login("Alice")
    b.login("Bob")
    start = a.poll_to_the_end(a.ok("poll")["cursor"])[-1]["cursor"]
    a2.poll_events()
    assert a.req("poll", wait_ms=30_000, id="held") is None
    assert a2.req("poll", wait_ms=30_000, id="other") is None
    m = a.send("Bob", "quiet", echo=False)
    assert a.out == []  # not woken by its own message
    assert a2.out[0]["events"] == [{"type": "message", "message": m}]
    assert b.poll_events() == [{"type": "message", "message": m}]
    # The next event answers the held poll, without the skipped message.
    r = b.send("Alice", "reply")
    assert a.out[0]["id"] == "held" and a.out[0]["events"] == [{"type": "message", "message": r}]
    # The same cursor gives the same events; the cursor has moved past both.
    assert a.poll_events(cursor=start) == [{"type": "message", "message": r}]
    assert a.poll_events(cursor=a.out[0]["cursor"]) == []
    # A new session (a resume after a lost connection) from that cursor gets both.
    again = Client(svc)
    again.ok("resume", token=token)
    assert [e["message"]["text"] for e in again.poll_events(cursor=start)] == ["quiet", "reply"]
    # Without the field (or with true) the sender hears of its message, as before.
    assert a.req("poll", wait_ms=30_000, id="held2") is None
    loud = a.send("Bob", "loud", echo=True)
    assert a.out[-1]["id"] == "held2"
    assert a.out[-1]["events"] == [{"type": "message", "message": loud}]


async def test_held_poll_past_own_message_without_echo(svc: ChatService) -> None:
    """A poll sent after an ``echo: false`` send, from the cursor before it, is held (its
    message is not news to it) and answered by the next event alone."""
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    cursor = a.poll_to_the_end(a.ok("poll")["cursor"])[-1]["cursor"]
    a.send("Bob", "first", echo=False)
    assert a.req("poll", cursor=cursor, wait_ms=30_000, id="late") is None
    assert a.out == []
    r = b.send("Alice", "answer")
    assert a.out == [
        {
            "purpose": "poll",
            "id": "late",
            "ok": True,
            "cursor": a.out[0]["cursor"],
            "events": [{"type": "message", "message": r}],
        }
    ]


async def test_long_poll_returns_at_once_when_events_wait(svc: ChatService) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    r = a.ok("poll", wait_ms=10_000)
    assert r["events"][0]["type"] == "presence"


async def test_long_poll_timeout(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    t0 = time.monotonic()
    assert a.req("poll", wait_ms=200, id=9) is None
    assert a.out == []  # held, not answered at once
    reply = await until(lambda: a.out, what="the poll to time out")
    # Never before its time: the timer runs on the loop's clock, the one t0 came from.
    assert time.monotonic() - t0 > 0.199
    assert reply[0]["ok"] is True and reply[0]["id"] == 9 and reply[0]["events"] == []
    # The cursor it returned is still good.
    assert "reset" not in a.ok("poll", cursor=reply[0]["cursor"])


async def test_second_poll_ends_the_first(svc: ChatService) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    a.poll_events()
    assert a.req("poll", wait_ms=10_000, id="first") is None
    second = a.req("poll", wait_ms=10_000, id="second")
    assert second is None
    assert [r["id"] for r in a.out] == ["first"]
    assert a.out[0]["ok"] is True and a.out[0]["events"] == []
    m = b.send("Alice", "x")
    assert [r["id"] for r in a.out] == ["first", "second"]
    assert a.out[1]["events"] == [{"type": "message", "message": m}]


async def test_held_poll_ends_on_disconnect(svc: ChatService) -> None:
    a, witness = Client(svc), Client(svc)
    a.login("Alice")
    witness.login("Alice")  # a second session: no presence change to wake anyone
    a.poll_events()
    witness.poll_events()
    assert a.req("poll", wait_ms=300) is None
    assert witness.req("poll", wait_ms=400) is None
    svc.disconnect(a.session)
    # The loop runs timers in deadline order: once the witness's later poll has
    # timed out, a's would have too, had the disconnect not ended it.
    await until(lambda: witness.out, what="the witness's poll to time out")
    assert witness.out[0]["events"] == []
    assert a.out == []


# -- presence and several sessions ----------------------------------------------------------


async def test_a_wave_of_logins_wakes_a_held_poll_once(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    assert a.req("poll", wait_ms=10_000) is None  # held
    Client(svc).login("Bob")
    Client(svc).login("Charlie")
    assert a.out == []  # not woken per login...
    await until(lambda: a.out, what="the presence wake-up")
    # ...but once, with the whole wave.
    assert len(a.out) == 1
    assert a.out[0]["events"] == [
        {"type": "presence", "username": "Bob", "online": True},
        {"type": "presence", "username": "Charlie", "online": True},
    ]
    assert a.poll_events() == []  # its cursor covers the whole wave
    assert len(a.out) == 1


async def test_held_poll_ending_before_the_wake_up_still_gets_presence(
    svc: ChatService,
) -> None:
    a, c = Client(svc), Client(svc)
    a.login("Alice")
    assert a.req("poll", wait_ms=10_000) is None
    c.login("Charlie")
    # Let the wake-up pass of Charlie's login run: none is pending from here on.
    await until(lambda: a.out, what="the wake-up for Charlie's login")
    assert a.out.pop()["events"] == [{"type": "presence", "username": "Charlie", "online": True}]
    c.poll_events()
    assert c.req("poll", wait_ms=10_000) is None  # answered by the next wake-up pass
    assert a.req("poll", wait_ms=20) is None  # times out before that pass is due
    Client(svc).login("Bob")  # schedules the pass 100 ms from now
    await until(lambda: a.out, what="the held poll to end")
    assert a.out[0]["events"] == [{"type": "presence", "username": "Bob", "online": True}]
    # After the wake-up pass (it answered Charlie): a got Bob's presence once, not again.
    await until(lambda: c.out, what="the wake-up pass")
    assert c.out[0]["events"] == [{"type": "presence", "username": "Bob", "online": True}]
    assert len(a.out) == 1
    assert a.poll_events(cursor=a.out[0]["cursor"]) == []  # delivered once, not skipped


async def test_presence_with_several_sessions(svc: ChatService) -> None:
    b = Client(svc)
    b.login("Bob")
    a1, a2 = Client(svc), Client(svc)
    a1.login("Alice")
    assert b.poll_events() == [{"type": "presence", "username": "Alice", "online": True}]
    r = a2.login("Alice")
    assert b.poll_events() == []  # already online
    assert r["users"][0] == {"username": "Bob", "online": True, "unread": 0}
    assert Client_users(svc, "Charlie")[0] == {"username": "Alice", "online": True, "unread": 0}
    # Each session gets every event of the user, including the other's sends.
    m1 = b.send("Alice", "to both")
    m2 = a1.send("Bob", "from a1")
    for s in (a1, a2):
        msgs = [e["message"] for e in s.poll_events() if e["type"] == "message"]
        assert msgs == [m1, m2]
    b.poll_events()
    a1.ok("exit")
    assert b.poll_events() == []  # a2 still online
    assert b.ok("users")["users"][0]["online"] is True
    svc.disconnect(a2.session)
    assert b.poll_events() == [{"type": "presence", "username": "Alice", "online": False}]
    assert b.ok("users")["users"][0]["online"] is False


def Client_users(svc: ChatService, name: str) -> list[dict[str, Any]]:  # noqa: N802
    c = Client(svc)
    users = c.login(name)["users"]
    svc.disconnect(c.session)
    return users


async def test_own_login_is_not_an_event(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    assert a.poll_events() == []


# -- resume tokens -------------------------------------------------------------------------


async def test_resume(svc: ChatService) -> None:
    a = Client(svc)
    token = a.login("Alice")["token"]
    svc.disconnect(a.session)
    b = Client(svc)
    b.login("Bob")
    b.poll_events()
    r = Client(svc).ok("resume", token=token, id=4)
    assert r["username"] == "Alice" and r["token"] == token and r["id"] == 4
    assert r["users"][0]["username"] == "Bob" and isinstance(r["cursor"], int)
    # resume counts as a login for presence.
    assert b.poll_events() == [{"type": "presence", "username": "Alice", "online": True}]


@pytest.mark.parametrize("token", ["", "nope", "x" * 256])
async def test_resume_invalid_token(svc: ChatService, token: str) -> None:
    c = Client(svc)
    c.err("resume", "invalid_token", token=token)
    c.login("Alice")


@pytest.mark.parametrize("fields", [{}, {"token": 5}, {"token": "x" * 257}, {"token": "\ud800"}])
async def test_resume_bad_fields(svc: ChatService, fields: dict[str, Any]) -> None:
    Client(svc).err("resume", "bad_request", **fields)


async def test_resume_survives_restart(
    svc: ChatService, data_dir: Path, start_svc: StartService
) -> None:
    token = Client(svc).login("Alice")["token"]
    svc.close()
    svc2 = start_svc()
    assert Client(svc2).ok("resume", token=token)["username"] == "Alice"
    assert token not in (data_dir / "tokens.json").read_text()  # kept hashed


async def test_resume_ends_on_exit(svc: ChatService) -> None:
    a = Client(svc)
    token = a.login("Alice")["token"]
    other = Client(svc)
    other.ok("resume", token=token)
    other.ok("exit")
    Client(svc).err("resume", "invalid_token", token=token)


async def test_resume_ends_on_password_change(svc: ChatService, data_dir: Path) -> None:
    token = Client(svc).login("Alice")["token"]
    bob_token = Client(svc).login("Bob")["token"]
    UserStore(data_dir).set_password("Alice", "new secret")  # what the users CLI does
    Client(svc).err("resume", "invalid_token", token=token)
    Client(svc).err("login", "invalid_credentials", username="Alice", password="123")
    Client(svc).login("Alice", "new secret")
    assert Client(svc).ok("resume", token=bob_token)["username"] == "Bob"


async def test_resume_ends_when_user_removed(svc: ChatService, data_dir: Path) -> None:
    token = Client(svc).login("Charlie")["token"]
    UserStore(data_dir).remove("Charlie")
    Client(svc).err("resume", "invalid_token", token=token)


def age_tokens(data_dir: Path, seconds_by_user: dict[str, float]) -> None:
    """Move the last use of each user's tokens back in ``tokens.json`` (the service is
    stopped: a clean stop leaves every token in that one file)."""
    path = data_dir / "tokens.json"
    records = json.loads(path.read_text())
    for rec in records.values():
        rec["used"] -= seconds_by_user.get(rec["user"], 0)
    path.write_text(json.dumps(records))


async def test_resume_expires_after_seven_days_unused(
    svc: ChatService, data_dir: Path, start_svc: StartService
) -> None:
    old = Client(svc).login("Alice")["token"]
    fresh = Client(svc).login("Bob")["token"]
    svc.close()
    age_tokens(data_dir, {"Alice": (7 * 24 + 1) * 3600, "Bob": 6 * 24 * 3600})
    svc2 = start_svc()
    Client(svc2).err("resume", "invalid_token", token=old)
    assert Client(svc2).ok("resume", token=fresh)["username"] == "Bob"


async def test_resume_refreshes_the_seven_days(
    svc: ChatService, data_dir: Path, start_svc: StartService
) -> None:
    token = Client(svc).login("Alice")["token"]
    svc.close()
    # Last used six days ago, then resumed now: good for another seven days.
    age_tokens(data_dir, {"Alice": 6 * 24 * 3600})
    svc2 = start_svc()
    Client(svc2).ok("resume", token=token)
    svc2.close()
    age_tokens(data_dir, {"Alice": 6 * 24 * 3600})  # 12 days since login, 6 since the resume
    svc3 = start_svc()
    assert Client(svc3).ok("resume", token=token)["username"] == "Alice"


# -- exit -------------------------------------------------------------------------------


async def test_exit_ends_the_session(svc: ChatService) -> None:
    b = Client(svc)
    b.login("Bob")
    a = Client(svc)
    a.login("Alice")
    b.poll_events()
    assert a.ok("exit", id="bye") == {"purpose": "exit", "id": "bye", "ok": True}
    assert a.session.closed
    assert b.poll_events() == [{"type": "presence", "username": "Alice", "online": False}]


async def test_fsync_always_replies_after_commit(data_dir: Path, start_svc: StartService) -> None:
    svc = start_svc(fsync="always")
    a = Client(svc)
    a.login("Alice")
    r = await a.areq("send_message", to="Bob", text="durable", id=1)
    assert r is not None and r["ok"] is True and r["id"] == 1
    r2 = await a.areq("read", **{"with": "Bob"}, up_to=r["message"]["id"])
    assert r2 is not None and r2["ok"] is True
    assert b'"durable"' in (data_dir / "history.journal").read_bytes()


async def test_users_file_change_seen_even_with_same_mtime(
    svc: ChatService, data_dir: Path
) -> None:
    # File systems stamp mtimes with a coarse clock: two writes a few ms apart
    # can carry the same mtime. The service must still notice the new file.
    a = Client(svc)
    a.login("Alice")
    path = data_dir / "users.json"
    st = path.stat()
    UserStore(data_dir).remove("Charlie")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [u["username"] for u in a.ok("users")["users"]] == ["Bob"]
    a.err("send_message", "unknown_user", to="Charlie", text="hi")
