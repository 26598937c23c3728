"""Every rule of PROTOCOL.md sections 2 and 3, on ChatService directly (no sockets)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from core_helpers import Client, async_wait_for, make_service, seed_users

from legacy_socket_server import chat, events
from legacy_socket_server import login as login_module
from legacy_socket_server.chat import ChatService
from legacy_socket_server.protocol import encode
from legacy_socket_server.users import UserStore


@pytest.fixture
def data_dir(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path / "data"
    seed_users(d, tmp_path_factory.getbasetemp() / "users-template")
    return d


@pytest.fixture
async def svc(data_dir: Path) -> AsyncIterator[ChatService]:
    s = make_service(data_dir)
    yield s
    s.close()


class FakeClock:
    """Stands in for ``time`` in chat.py and login.py: the service's clock, moved by the test."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.perf_counter = time.perf_counter

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    fake_time = types.SimpleNamespace(monotonic=fake.monotonic, perf_counter=time.perf_counter)
    monkeypatch.setattr(chat, "time", fake_time)
    monkeypatch.setattr(login_module, "time", fake_time)
    return fake


def restart(svc: ChatService, data_dir: Path, **kwargs: Any) -> ChatService:
    svc.close()
    return make_service(data_dir, **kwargs)


# -- login ----------------------------------------------------------------------------


async def test_login_reply(svc: ChatService) -> None:
    a = Client(svc)
    r = a.ok("login", username="Alice", password="123", id="r1")
    assert r["purpose"] == "login" and r["id"] == "r1" and r["username"] == "Alice"
    assert r["users"] == [
        {"username": "Bob", "online": False, "unread": 0},
        {"username": "Charlie", "online": False, "unread": 0},
    ]
    assert isinstance(r["cursor"], int) and r["cursor"] >= 0
    assert isinstance(r["token"], str) and len(r["token"]) >= 22  # >= 128 bits of base64


async def test_invalid_credentials_same_for_unknown_user_and_wrong_password(
    svc: ChatService,
) -> None:
    wrong = Client(svc).err("login", "invalid_credentials", username="Alice", password="nope")
    unknown = Client(svc).err("login", "invalid_credentials", username="Zed", password="nope")
    assert wrong["message"] == unknown["message"]
    assert set(wrong) == set(unknown)
    # Case matters: "alice" is not Alice.
    Client(svc).err("login", "invalid_credentials", username="alice", password="123")


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"username": "Alice"},
        {"password": "123"},
        {"username": 5, "password": "123"},
        {"username": "Alice", "password": 123},
        {"username": ["Alice"], "password": "123"},
        {"username": "Al\ud800", "password": "123"},
        {"username": "Alice", "password": "12\udc003"},
    ],
)
async def test_login_bad_fields(svc: ChatService, fields: dict[str, Any]) -> None:
    c = Client(svc)
    c.err("login", "bad_request", **fields)
    c.login("Alice")  # the session is still usable


async def test_login_or_resume_when_logged_in_is_bad_request(svc: ChatService) -> None:
    a = Client(svc)
    token = a.login("Alice")["token"]
    a.err("login", "bad_request", username="Bob", password="456")
    a.err("resume", "bad_request", token=token)
    assert a.ok("users")  # still Alice
    assert [u["username"] for u in a.ok("users")["users"]] == ["Bob", "Charlie"]


async def test_rate_limited_after_five_failures(svc: ChatService, clock: FakeClock) -> None:
    for _ in range(5):
        Client(svc).err("login", "invalid_credentials", username="Alice", password="bad")
    # Locked: even the right password is refused, for that name only.
    Client(svc).err("login", "rate_limited", username="Alice", password="123")
    Client(svc).login("Bob")
    clock.offset += 29
    Client(svc).err("login", "rate_limited", username="Alice", password="123")
    clock.offset += 2  # past the 30 s lock
    Client(svc).login("Alice")


async def test_failures_outside_the_window_do_not_lock(svc: ChatService, clock: FakeClock) -> None:
    for _ in range(4):
        Client(svc).err("login", "invalid_credentials", username="Bob", password="bad")
    clock.offset += 61
    Client(svc).err("login", "invalid_credentials", username="Bob", password="bad")
    Client(svc).login("Bob")


async def test_success_resets_failure_count(svc: ChatService) -> None:
    for _ in range(4):
        Client(svc).err("login", "invalid_credentials", username="Bob", password="bad")
    Client(svc).login("Bob")
    for _ in range(4):
        Client(svc).err("login", "invalid_credentials", username="Bob", password="bad")
    Client(svc).login("Bob")


async def test_unknown_names_are_throttled_too(svc: ChatService) -> None:
    for _ in range(5):
        Client(svc).err("login", "invalid_credentials", username="Ghost", password="x")
    Client(svc).err("login", "rate_limited", username="Ghost", password="x")


# -- requests in general ----------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["users", "send_message", "poll", "history", "read"])
async def test_not_logged_in(svc: ChatService, purpose: str) -> None:
    Client(svc).err(purpose, "not_logged_in", to="Bob", text="x", **{"with": "Bob"}, up_to=1)


async def test_ping_and_exit_before_login(svc: ChatService) -> None:
    c = Client(svc)
    assert c.ok("ping", id=3) == {"purpose": "ping", "id": 3, "ok": True}
    assert c.ok("exit") == {"purpose": "exit", "ok": True}


async def test_unknown_purpose(svc: ChatService) -> None:
    c = Client(svc)
    assert c.err("frobnicate", "unknown_purpose", id=1)["id"] == 1
    c.login("Alice")
    c.err("frobnicate", "unknown_purpose")
    c.err("", "unknown_purpose")


@pytest.mark.parametrize("rid", [0, -5, 2**62, "", "x" * 64, "é"])
async def test_reply_echoes_id(svc: ChatService, rid: Any) -> None:
    c = Client(svc)
    r = c.ok("ping", id=rid)
    assert r["id"] == rid and type(r["id"]) is type(rid)
    e = c.err("users", "not_logged_in", id=rid)
    assert e["id"] == rid and e["purpose"] == "users"


@pytest.mark.parametrize("rid", [1.5, True, False, [1], {"a": 1}, "x" * 65, "\ud800"])
async def test_bad_ids_are_bad_request_not_echoed(svc: ChatService, rid: Any) -> None:
    r = Client(svc).err("ping", "bad_request", id=rid)
    assert "id" not in r
    encode(r)  # the reply can be sent


async def test_every_reply_encodes(svc: ChatService) -> None:
    c = Client(svc)
    for fields in [{"username": "\ud800", "password": "x"}, {"username": "A" * 10_000}]:
        encode(c.req("login", **fields))  # type: ignore[arg-type]


# -- users -----------------------------------------------------------------------------


async def test_users_list_presence_and_unread(svc: ChatService) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    b.send("Alice", "one")
    b.send("Alice", "two")
    assert a.ok("users")["users"] == [
        {"username": "Bob", "online": True, "unread": 2},
        {"username": "Charlie", "online": False, "unread": 0},
    ]
    assert b.ok("users")["users"][0] == {"username": "Alice", "online": True, "unread": 0}


# -- send_message --------------------------------------------------------------------------


async def test_send_message_reply_and_ids(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    m1 = a.send("Bob", "hi")
    m2 = a.send("Charlie", "yo", client_msg_id="c-1")
    assert set(m1) == {"id", "from", "to", "text", "ts"}
    assert m1["from"] == "Alice" and m1["to"] == "Bob" and m1["text"] == "hi"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", m1["ts"])
    assert m2["client_msg_id"] == "c-1"
    assert isinstance(m1["id"], int) and m2["id"] > m1["id"]


@pytest.mark.parametrize("to", ["Alice", "Zed", "alice", ""])
async def test_send_unknown_user(svc: ChatService, to: str) -> None:
    a = Client(svc)
    a.login("Alice")
    a.err("send_message", "unknown_user", to=to, text="hi")


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r", "\u3000\u2003"])
async def test_empty_text(svc: ChatService, text: str) -> None:
    a = Client(svc)
    a.login("Alice")
    a.err("send_message", "empty_text", to="Bob", text=text)


async def test_text_length_counts_code_points(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    a.err("send_message", "text_too_long", to="Bob", text="x" * 10_001)
    a.err("send_message", "text_too_long", to="Bob", text="😀" * 10_001)
    m = a.send("Bob", "😀" * 10_000)
    assert len(m["text"]) == 10_000
    a.send("Bob", "x" * 10_000)


@pytest.mark.parametrize(
    "fields",
    [
        {"text": "hi"},
        {"to": "Bob"},
        {"to": 1, "text": "hi"},
        {"to": "Bob", "text": 5},
        {"to": "Bob", "text": "bad \ud800 text"},
        {"to": "Bob", "text": "hi", "client_msg_id": 7},
        {"to": "Bob", "text": "hi", "client_msg_id": "x" * 65},
        {"to": "Bob", "text": "hi", "client_msg_id": "\udfff"},
    ],
)
async def test_send_bad_fields(svc: ChatService, fields: dict[str, Any]) -> None:
    a = Client(svc)
    a.login("Alice")
    a.err("send_message", "bad_request", **fields)
    assert a.ok("history", **{"with": "Bob"})["messages"] == []


async def test_dedup_by_client_msg_id(svc: ChatService, data_dir: Path) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    first = a.send("Bob", "once", client_msg_id="k1")
    again = a.send("Bob", "once", client_msg_id="k1")
    assert again == first
    # Another sender may use the same client id.
    other = b.send("Alice", "mine", client_msg_id="k1")
    assert other["id"] != first["id"]
    assert [m["text"] for m in a.ok("history", **{"with": "Bob"})["messages"]] == ["once", "mine"]
    events = [e for e in b.poll_events() if e["type"] == "message"]
    assert [e["message"]["id"] for e in events] == [first["id"], other["id"]]
    # After a restart the retry is still recognised.
    svc2 = restart(svc, data_dir)
    try:
        a2 = Client(svc2)
        a2.login("Alice")
        assert a2.send("Bob", "once", client_msg_id="k1") == first
        assert len(a2.ok("history", **{"with": "Bob"})["messages"]) == 2
    finally:
        svc2.close()


async def test_burst_of_500_then_sustained_rate(svc: ChatService, clock: FakeClock) -> None:
    a = Client(svc)
    a.login("Alice")
    for i in range(500):
        a.send("Bob", f"m{i}")
    # Keep going until the bucket runs dry (it may allow more than 500).
    for _ in range(10_000):
        r = a.req("send_message", to="Bob", text="more")
        assert r is not None
        if not r["ok"]:
            assert r["error"] == "rate_limited"
            break
    else:
        pytest.fail("no rate limit at all")
    clock.offset += 1.0
    for i in range(20):  # 20 per second sustained
        a.send("Bob", f"s{i}")


async def test_offline_receiver_gets_unread_at_login(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    for i in range(3):
        a.send("Bob", f"while you were out {i}")
    b = Client(svc)
    users = b.login("Bob")["users"]
    assert users[0] == {"username": "Alice", "online": True, "unread": 3}
    hist = b.ok("history", **{"with": "Alice"})["messages"]
    assert [m["text"] for m in hist] == [f"while you were out {i}" for i in range(3)]


async def test_storage_unavailable(
    svc: ChatService, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    kept = a.send("Bob", "kept")
    b.poll_events()
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    a.err("send_message", "storage_unavailable", to="Bob", text="lost")
    b.err("read", "storage_unavailable", **{"with": "Alice"}, up_to=kept["id"])
    # Nothing of the refused requests is visible.
    assert b.poll_events() == []
    assert [m["text"] for m in b.ok("history", **{"with": "Alice"})["messages"]] == ["kept"]
    assert b.ok("users")["users"][0]["unread"] == 1
    monkeypatch.setattr(os, "write", real_write)
    after = a.send("Bob", "after")
    assert after["id"] > kept["id"]
    svc2 = restart(svc, data_dir)
    try:
        b2 = Client(svc2)
        users = b2.login("Bob")["users"]
        assert users[0]["unread"] == 2
        texts = [m["text"] for m in b2.ok("history", **{"with": "Alice"})["messages"]]
        assert texts == ["kept", "after"]
    finally:
        svc2.close()


async def test_storage_unavailable_when_journal_closed(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    assert svc.history._fd is not None
    os.close(svc.history._fd)  # EBADF on the next write
    try:
        a.err("send_message", "storage_unavailable", to="Bob", text="x")
    finally:
        svc.history._open_journal()
    a.send("Bob", "works again")


# -- history -----------------------------------------------------------------------------


async def test_history_paging(svc: ChatService) -> None:
    a, b, c = Client(svc), Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    c.login("Charlie")
    ids = []
    for i in range(120):
        ids.append((a if i % 2 else b).send("Bob" if i % 2 else "Alice", f"m{i}")["id"])
        c.send("Alice", "noise")  # another conversation interleaved
    page = a.ok("history", **{"with": "Bob"})
    assert len(page["messages"]) == 50 and page["has_more"] is True
    got = page["messages"]
    assert [m["id"] for m in got] == sorted(m["id"] for m in got)  # oldest first
    assert got[-1]["id"] == ids[-1]
    everything = list(got)
    while page["has_more"]:
        page = a.ok("history", **{"with": "Bob"}, before=everything[0]["id"], limit=37)
        assert len(page["messages"]) <= 37
        everything = page["messages"] + everything
    assert [m["id"] for m in everything] == ids
    assert [m["text"] for m in everything] == [f"m{i}" for i in range(120)]
    assert b.ok("history", **{"with": "Alice"}, limit=200)["messages"] == everything
    # before the first message: nothing; limit 1: just one with has_more.
    assert a.ok("history", **{"with": "Bob"}, before=ids[0]) == {
        "purpose": "history",
        "ok": True,
        "messages": [],
        "has_more": False,
    }
    one = a.ok("history", **{"with": "Bob"}, limit=1)
    assert [m["id"] for m in one["messages"]] == [ids[-1]] and one["has_more"] is True
    mid = a.ok("history", **{"with": "Bob"}, before=ids[10] + 1, limit=3)
    assert [m["id"] for m in mid["messages"]] == ids[8:11] and mid["has_more"] is True
    full = a.ok("history", **{"with": "Bob"}, limit=200)
    assert len(full["messages"]) == 120 and full["has_more"] is False


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"with": 3},
        {"with": "Bob", "limit": 0},
        {"with": "Bob", "limit": 201},
        {"with": "Bob", "limit": "5"},
        {"with": "Bob", "before": "5"},
        {"with": "Bob", "before": 1.5},
        {"with": "Bob", "before": True},
    ],
)
async def test_history_bad_fields(svc: ChatService, fields: dict[str, Any]) -> None:
    a = Client(svc)
    a.login("Alice")
    a.err("history", "bad_request", **fields)


async def test_history_unknown_user_and_empty(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    a.err("history", "unknown_user", **{"with": "Alice"})
    a.err("history", "unknown_user", **{"with": "Nobody"})
    r = a.ok("history", **{"with": "Charlie"})
    assert r["messages"] == [] and r["has_more"] is False


async def test_history_cut_to_frame_size(data_dir: Path) -> None:
    svc = make_service(data_dir, max_frame_bytes=30_000)
    try:
        a = Client(svc)
        a.login("Alice")
        ids = [a.send("Bob", f"{i}" + "x" * 5000)["id"] for i in range(12)]
        r = a.ok("history", **{"with": "Bob"}, id="x" * 64)
        assert len(encode(r)) <= 30_000 + 9
        assert 0 < len(r["messages"]) < 12 and r["has_more"] is True
        assert [m["id"] for m in r["messages"]] == ids[-len(r["messages"]) :]
    finally:
        svc.close()


# -- read markers and unread -------------------------------------------------------------


async def test_read_markers(svc: ChatService, data_dir: Path) -> None:
    a, b1, b2 = Client(svc), Client(svc), Client(svc)
    a.login("Alice")
    b1.login("Bob")
    b2.login("Bob")
    ids = [a.send("Bob", f"m{i}")["id"] for i in range(5)]
    assert b1.ok("users")["users"][0]["unread"] == 5
    for c in (a, b1, b2):
        c.poll_events()
    b1.ok("read", **{"with": "Alice"}, up_to=ids[2])
    assert b1.ok("users")["users"][0]["unread"] == 2
    # The other session hears of it; the session that set it does not.
    assert b2.poll_events() == [{"type": "read", "with": "Alice", "up_to": ids[2]}]
    assert b1.poll_events() == []
    assert a.poll_events() == []  # nor does the sender
    # Never backwards.
    b1.ok("read", **{"with": "Alice"}, up_to=ids[0])
    assert b1.ok("users")["users"][0]["unread"] == 2
    assert b2.poll_events() == []
    # Clamped to the newest message.
    b1.ok("read", **{"with": "Alice"}, up_to=10**9)
    assert b1.ok("users")["users"][0]["unread"] == 0
    assert b2.poll_events() == [{"type": "read", "with": "Alice", "up_to": ids[-1]}]
    newer = a.send("Bob", "newer")
    assert b1.ok("users")["users"][0]["unread"] == 1  # the clamp did not swallow it
    # Persisted across a restart.
    svc2 = restart(svc, data_dir)
    try:
        b3 = Client(svc2)
        assert b3.login("Bob")["users"][0]["unread"] == 1
        b3.ok("read", **{"with": "Alice"}, up_to=newer["id"])
        svc3 = restart(svc2, data_dir)
        svc2 = svc3
        assert Client(svc3).login("Bob")["users"][0]["unread"] == 0
    finally:
        svc2.close()


async def test_read_counts_only_the_peers_messages(svc: ChatService) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    a.send("Bob", "1")
    mine = b.send("Alice", "2")
    a.send("Bob", "3")
    assert b.ok("users")["users"][0]["unread"] == 2
    b.ok("read", **{"with": "Alice"}, up_to=mine["id"])
    assert b.ok("users")["users"][0]["unread"] == 1
    assert a.ok("users")["users"][0]["unread"] == 1


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"with": "Alice", "up_to": 1}, "unknown_user"),
        ({"with": "Zed", "up_to": 1}, "unknown_user"),
        ({"with": "Bob"}, "bad_request"),
        ({"up_to": 1}, "bad_request"),
        ({"with": "Bob", "up_to": "1"}, "bad_request"),
        ({"with": "Bob", "up_to": -1}, "bad_request"),
        ({"with": "Bob", "up_to": 1.0}, "bad_request"),
    ],
)
async def test_read_errors(svc: ChatService, fields: dict[str, Any], code: str) -> None:
    a = Client(svc)
    a.login("Alice")
    a.err("read", code, **fields)


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


async def test_poll_reset_cases(svc: ChatService, data_dir: Path) -> None:
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
    svc2 = restart(svc, data_dir)
    try:
        a2 = Client(svc2)
        new = a2.login("Alice")["cursor"]
        assert new != cur
        assert a2.ok("poll", cursor=cur)["reset"] is True
    finally:
        svc2.close()


async def test_poll_reset_when_log_trimmed(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "LOG_KEEP", 5)
    svc = make_service(data_dir)
    try:
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
    finally:
        svc.close()


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


async def test_poll_batches_are_bounded_and_lose_nothing(data_dir: Path) -> None:
    svc = make_service(data_dir, send_burst=2000)
    try:
        a, b = Client(svc), Client(svc)
        cur = a.login("Alice")["cursor"]
        b.login("Bob")
        sent = [b.send("Alice", f"n{i}")["id"] for i in range(1200)]
        got: list[int] = []
        sizes = []
        for _ in range(20):
            r = a.ok("poll", cursor=cur)
            if not r["events"]:
                break
            sizes.append(len(r["events"]))
            got += [e["message"]["id"] for e in r["events"] if e["type"] == "message"]
            cur = r["cursor"]
        assert got == sent
        assert all(s >= 100 for s in sizes[:-1]) and max(sizes) < 1200
    finally:
        svc.close()


async def test_poll_cut_to_frame_size(data_dir: Path) -> None:
    svc = make_service(data_dir, max_frame_bytes=50_000)
    try:
        a, b = Client(svc), Client(svc)
        cur = a.login("Alice")["cursor"]
        b.login("Bob")
        sent = [b.send("Alice", "y" * 9_000)["id"] for _ in range(20)]
        got: list[int] = []
        while True:
            r = a.ok("poll", cursor=cur, id="i" * 64)
            assert len(encode(r)) <= 50_000 + 9
            if not r["events"]:
                break
            got += [e["message"]["id"] for e in r["events"] if e["type"] == "message"]
            cur = r["cursor"]
        assert got == sent
    finally:
        svc.close()


async def test_long_poll_wakes_on_event(svc: ChatService) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    a.poll_events()
    assert a.req("poll", wait_ms=10_000, id="held") is None
    assert a.out == []
    t0 = time.monotonic()
    m = b.send("Alice", "wake up")
    reply = await async_wait_for(lambda: a.out, 5, "the held poll's reply")
    assert time.monotonic() - t0 < 1
    assert reply == [
        {
            "purpose": "poll",
            "id": "held",
            "ok": True,
            "cursor": reply[0]["cursor"],
            "events": [{"type": "message", "message": m}],
        }
    ]
    assert a.poll_events() == []
    # Only one reply, even later.
    b.send("Alice", "again")
    assert len(a.out) == 1


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
    reply = await async_wait_for(lambda: a.out, 5, "the poll to time out")
    elapsed = time.monotonic() - t0
    assert 0.15 < elapsed < 2
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
    await async_wait_for(lambda: len(a.out) == 2, 5, "the second poll")
    assert a.out[1]["id"] == "second"
    assert a.out[1]["events"] == [{"type": "message", "message": m}]


async def test_held_poll_ends_on_disconnect(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    assert a.req("poll", wait_ms=300) is None
    svc.disconnect(a.session)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.5:
        await async_wait_for(lambda: True)
    assert a.out == []


# -- presence and several sessions ----------------------------------------------------------


async def test_a_wave_of_logins_wakes_a_held_poll_once(svc: ChatService) -> None:
    a = Client(svc)
    a.login("Alice")
    assert a.req("poll", wait_ms=10_000) is None  # held
    Client(svc).login("Bob")
    Client(svc).login("Charlie")
    assert a.out == []  # not woken per login...
    await async_wait_for(lambda: a.out, 5, "the presence wake-up")
    await asyncio.sleep(chat.PRESENCE_WAKE_DELAY * 2)
    # ...but once, with the whole wave.
    assert len(a.out) == 1
    assert a.out[0]["events"] == [
        {"type": "presence", "username": "Bob", "online": True},
        {"type": "presence", "username": "Charlie", "online": True},
    ]


async def test_held_poll_ending_before_the_wake_up_still_gets_presence(
    svc: ChatService,
) -> None:
    a = Client(svc)
    a.login("Alice")
    assert a.req("poll", wait_ms=20) is None  # ends before the wake-up pass
    Client(svc).login("Bob")
    await async_wait_for(lambda: a.out, 5, "the held poll to end")
    assert a.out[0]["events"] == [{"type": "presence", "username": "Bob", "online": True}]
    await asyncio.sleep(chat.PRESENCE_WAKE_DELAY * 2)
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


async def test_resume_survives_restart(svc: ChatService, data_dir: Path) -> None:
    token = Client(svc).login("Alice")["token"]
    svc2 = restart(svc, data_dir)
    try:
        assert Client(svc2).ok("resume", token=token)["username"] == "Alice"
    finally:
        svc2.close()
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


async def test_resume_expires_after_seven_days_unused(svc: ChatService, data_dir: Path) -> None:
    old = Client(svc).login("Alice")["token"]
    fresh = Client(svc).login("Bob")["token"]
    svc.close()
    path = data_dir / "tokens.json"
    records = json.loads(path.read_text())
    for rec in records.values():
        rec["used"] -= (7 * 24 + 1) * 3600 if rec["user"] == "Alice" else 6 * 24 * 3600
    path.write_text(json.dumps(records))
    svc2 = make_service(data_dir)
    try:
        Client(svc2).err("resume", "invalid_token", token=old)
        assert Client(svc2).ok("resume", token=fresh)["username"] == "Bob"
    finally:
        svc2.close()


async def test_resume_refreshes_the_seven_days(svc: ChatService, data_dir: Path) -> None:
    token = Client(svc).login("Alice")["token"]
    # Used six days ago, then resumed now: good for another seven days.
    (rec,) = svc.tokens._records.values()
    rec["used"] = time.time() - 6 * 24 * 3600
    Client(svc).ok("resume", token=token)
    rec["used"] -= 6 * 24 * 3600
    Client(svc).ok("resume", token=token)


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


async def test_fsync_always_replies_after_commit(data_dir: Path) -> None:
    svc = make_service(data_dir, fsync="always")
    try:
        a = Client(svc)
        a.login("Alice")
        r = await a.areq("send_message", to="Bob", text="durable", id=1)
        assert r is not None and r["ok"] is True and r["id"] == 1
        r2 = await a.areq("read", **{"with": "Bob"}, up_to=r["message"]["id"])
        assert r2 is not None and r2["ok"] is True
        assert b'"durable"' in (data_dir / "history.journal").read_bytes()
    finally:
        svc.close()


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
