"""Every rule of docs/protocol.md (requests, replies, events), on ChatService directly."""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import StartService
from core_helpers import Client, FakeClock, failing_writes

from legacy_socket_server.chat import ChatService
from legacy_socket_server.protocol import encode

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
        {"to": "Bob", "text": "hi", "echo": "no"},
        {"to": "Bob", "text": "hi", "echo": 0},
    ],
)
async def test_send_bad_fields(svc: ChatService, fields: dict[str, Any]) -> None:
    a = Client(svc)
    a.login("Alice")
    a.err("send_message", "bad_request", **fields)
    assert a.ok("history", **{"with": "Bob"})["messages"] == []


async def test_dedup_by_client_msg_id(svc: ChatService, start_svc: StartService) -> None:
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
    svc.close()
    svc2 = start_svc()
    a2 = Client(svc2)
    a2.login("Alice")
    assert a2.send("Bob", "once", client_msg_id="k1") == first
    assert len(a2.ok("history", **{"with": "Bob"})["messages"]) == 2


def sent_before_refused(client: Client, limit: int = 10_000) -> int:
    """How many messages one burst gets through before ``rate_limited`` (``limit``: none)."""
    for n in range(limit):
        r = client.req("send_message", to="Bob", text=f"b{n}")
        assert r is not None
        if not r["ok"]:
            assert r["error"] == "rate_limited"
            return n
    return limit


async def test_send_rate_and_burst_are_settings(start_svc: StartService, clock: FakeClock) -> None:
    a = Client(start_svc(send_burst=510, send_rate=25.0))
    a.login("Alice")
    assert sent_before_refused(a) == 510
    clock.offset += 2.0  # 25/s refills 50
    assert sent_before_refused(a) == 50


async def test_send_rate_zero_is_no_limit(start_svc: StartService) -> None:
    a = Client(start_svc(send_rate=0.0))
    a.login("Alice")
    assert sent_before_refused(a, limit=3_000) == 3_000


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
    svc: ChatService, data_dir: Path, start_svc: StartService
) -> None:
    a, b = Client(svc), Client(svc)
    a.login("Alice")
    b.login("Bob")
    kept = a.send("Bob", "kept")
    b.poll_events()
    with failing_writes(data_dir / "history.journal", errno.ENOSPC):
        a.err("send_message", "storage_unavailable", to="Bob", text="lost")
        b.err("read", "storage_unavailable", **{"with": "Alice"}, up_to=kept["id"])
        # Nothing of the refused requests is visible.
        assert b.poll_events() == []
        assert [m["text"] for m in b.ok("history", **{"with": "Alice"})["messages"]] == ["kept"]
        assert b.ok("users")["users"][0]["unread"] == 1
    after = a.send("Bob", "after")
    assert after["id"] > kept["id"]
    svc.close()
    svc2 = start_svc()
    b2 = Client(svc2)
    users = b2.login("Bob")["users"]
    assert users[0]["unread"] == 2
    texts = [m["text"] for m in b2.ok("history", **{"with": "Alice"})["messages"]]
    assert texts == ["kept", "after"]


@pytest.mark.parametrize("err", [errno.EBADF, errno.EIO, errno.EDQUOT])
async def test_storage_unavailable_on_any_write_error(
    svc: ChatService, data_dir: Path, err: int
) -> None:
    """A dead journal descriptor, an I/O error, a quota: refused like a full disk."""
    a = Client(svc)
    a.login("Alice")
    with failing_writes(data_dir / "history.journal", err):
        a.err("send_message", "storage_unavailable", to="Bob", text="x")
    a.send("Bob", "works again")
    assert [m["text"] for m in a.ok("history", **{"with": "Bob"})["messages"]] == ["works again"]


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


async def test_history_cut_to_frame_size(start_svc: StartService) -> None:
    svc = start_svc(max_frame_bytes=30_000)
    a = Client(svc)
    a.login("Alice")
    ids = [a.send("Bob", f"{i}" + "x" * 5000)["id"] for i in range(12)]
    r = a.ok("history", **{"with": "Bob"}, id="x" * 64)
    assert len(encode(r)) <= 30_000 + 9
    assert 0 < len(r["messages"]) < 12 and r["has_more"] is True
    assert [m["id"] for m in r["messages"]] == ids[-len(r["messages"]) :]


# -- read markers and unread -------------------------------------------------------------


async def test_read_markers(svc: ChatService, start_svc: StartService) -> None:
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
    svc.close()
    svc2 = start_svc()
    b3 = Client(svc2)
    assert b3.login("Bob")["users"][0]["unread"] == 1
    b3.ok("read", **{"with": "Alice"}, up_to=newer["id"])
    svc2.close()
    svc3 = start_svc()
    assert Client(svc3).login("Bob")["users"][0]["unread"] == 0


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
