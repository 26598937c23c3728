"""The desktop model (ChatClient) without a display, against a real core subprocess."""

from __future__ import annotations

import socket

from desktop_helpers import Peer, drive, logged_in, unread_on_server
from waiting import wait_for

from legacy_socket_server.desktop import model as model_mod
from legacy_socket_server.desktop.conversation import Conversation
from legacy_socket_server.desktop.model import ChatClient
from legacy_socket_server.users import UserStore


def test_login_lists_other_users_online_first(core_proc, bob_peer) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    assert alice.username == "Alice"
    assert [(u.username, u.online) for u in alice.sorted_users()] == [
        ("Bob", True),
        ("Charlie", False),
    ]
    assert alice.error is None


def test_wrong_password_shows_server_message_and_allows_retry(core_proc) -> None:
    client = ChatClient(core_proc.host, core_proc.port)
    client.login("Alice", "nope")
    drive(client, lambda: client.phase == "logged_out" and client.error, what="refusal")
    assert "wrong user name or password" in client.error
    client.login("Alice", "123")
    drive(client, lambda: client.phase == "ready", what="second attempt")


def test_unreachable_server_is_reported_without_blocking() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ChatClient("127.0.0.1", port)
    client.login("Alice", "123")
    drive(client, lambda: client.phase == "unreachable", what="connect failure")
    assert f"127.0.0.1:{port}" in client.error


def test_send_receive_unread_and_read_marking(core_proc, bob_peer) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    # Bob writes while Alice has no conversation open: unread rises and rings.
    bob_peer.send("Alice", "hi Alice 👋")
    changes: set[str] = set()

    def unread_seen() -> bool:
        changes.update(alice.tick())
        return alice.users["Bob"].unread == 1

    wait_for(unread_seen, what="unread from Bob")
    assert "bell" in changes
    assert alice.total_unread == 1

    alice.open_conversation("Bob")
    drive(alice, lambda: alice.messages and not alice.conv.loading, what="history")
    assert [m["text"] for m in alice.messages] == ["hi Alice 👋"]
    assert alice.users["Bob"].unread == 0
    wait_for(lambda: bob_peer.user("Alice")["online"], what="presence")
    # The read marker reaches the server (the model keeps ticking meanwhile): Alice's
    # own unread count from Bob, as the core tells a fresh session, drops to 0.
    drive(alice, lambda: _unread_on_server(core_proc, "Alice", "Bob") == 0, what="read marker")

    # A message into the open conversation appears at once and stays read.
    bob_peer.send("Alice", "مرحبا — ça va?")
    drive(alice, lambda: len(alice.messages) == 2, what="live message")
    assert alice.users["Bob"].unread == 0
    drive(alice, lambda: _unread_on_server(core_proc, "Alice", "Bob") == 0, what="read marker")

    # Alice answers; empty text is refused locally and sends nothing.
    assert alice.send("   \n") is False
    assert alice.send("fine, thanks ✓") is True
    drive(alice, lambda: alice.pending_count == 0, what="send ack")
    texts = [m["text"] for m in bob_peer.history("Alice")]
    assert texts == ["hi Alice 👋", "مرحبا — ça va?", "fine, thanks ✓"]
    assert alice.messages[-1]["from"] == "Alice"


def _unread_on_server(core_proc, name: str, peer: str) -> int:
    password = {"Alice": "123", "Bob": "456", "Charlie": "789"}[name]
    return unread_on_server(core_proc.host, core_proc.port, name, password, peer)


def test_presence_changes_show_live(core_proc) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    assert not alice.users["Charlie"].online
    charlie = Peer(core_proc.host, core_proc.port)
    charlie.login("Charlie", "789")
    drive(alice, lambda: alice.users["Charlie"].online, what="Charlie online")
    assert alice.sorted_users()[0].username == "Charlie"
    charlie.call("exit")
    charlie.close()
    drive(alice, lambda: not alice.users["Charlie"].online, what="Charlie offline")


def test_history_pages_load_older_on_request(core_proc, bob_peer, monkeypatch) -> None:
    monkeypatch.setattr(model_mod, "HISTORY_PAGE", 20)
    for i in range(45):
        bob_peer.send("Alice", f"m{i}")
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    assert alice.users["Bob"].unread == 45
    alice.open_conversation("Bob")
    drive(alice, lambda: alice.messages and not alice.conv.loading, what="first page")
    assert [m["text"] for m in alice.messages] == [f"m{i}" for i in range(25, 45)]
    assert alice.has_more
    assert alice.load_older()
    assert not alice.load_older()  # one page at a time
    drive(alice, lambda: len(alice.messages) == 40, what="second page")
    assert alice.load_older()
    drive(alice, lambda: len(alice.messages) == 45 and not alice.conv.loading, what="last")
    assert [m["text"] for m in alice.messages] == [f"m{i}" for i in range(45)]
    assert not alice.has_more
    assert not alice.load_older()


def test_reconnect_after_core_restart_no_double_and_draft_kept(core_proc, bob_peer) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    alice.open_conversation("Bob")
    drive(alice, lambda: not alice.conv.loading, what="history")
    alice.set_draft("Bob", "half-typed thought")

    # The send reaches the core and is stored, then the core dies before Alice reads
    # the reply: the retry after reconnecting must not double it (client_msg_id).
    assert alice.send("sent as the core died")
    wait_for(
        lambda: any(m["text"] == "sent as the core died" for m in bob_peer.history("Alice")),
        what="the core to store the message",
    )
    assert alice.pending_count == 1  # Alice has not seen the reply: no tick yet
    bob_peer.close()
    core_proc.kill()
    drive(alice, lambda: alice.phase == "reconnecting", what="reconnecting")
    assert alice.error == "reconnecting…"
    # A message typed while disconnected waits in the outbox.
    assert alice.send("typed while offline")
    drive(alice, lambda: alice.reconnect_attempts >= 2, what="a failed retry")
    core_proc.start()
    drive(alice, lambda: alice.phase == "ready" and alice.pending_count == 0, timeout=30)
    drive(alice, lambda: not alice.conv.loading, what="reload")

    peer = Peer(core_proc.host, core_proc.port)
    peer.login("Bob", "456")
    texts = [m["text"] for m in peer.history("Alice")]
    assert texts.count("sent as the core died") == 1
    assert texts.count("typed while offline") == 1
    assert [m["text"] for m in alice.visible_messages()] == texts
    assert alice.drafts == {"Bob": "half-typed thought"}
    # Presence and live messages work on the new connection.
    peer.send("Alice", "welcome back")
    drive(alice, lambda: alice.messages[-1]["text"] == "welcome back", what="live message")
    peer.close()


def test_refused_resume_returns_to_login(core_proc) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    # The password changes (what the users CLI does), which ends Alice's token; then
    # the core restarts, so the model loses its link and its resume is refused.
    UserStore(core_proc.data_dir).set_password("Alice", "a new secret")
    core_proc.kill()
    drive(alice, lambda: alice.phase == "reconnecting", what="reconnecting")
    core_proc.start()
    drive(alice, lambda: alice.phase == "logged_out", timeout=30, what="login form")
    assert "log in again" in alice.error
    assert alice.login_name == "Alice"
    # The form works with the new password.
    alice.login("Alice", "a new secret")
    drive(alice, lambda: alice.phase == "ready", what="login with the new password")


def test_ten_thousand_character_message_round_trips(core_proc, bob_peer) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    alice.open_conversation("Bob")
    drive(alice, lambda: not alice.conv.loading)
    text = ("é🙂ש" * 3334)[:10_000]
    assert alice.send(text)
    drive(alice, lambda: alice.pending_count == 0, what="long send")
    assert bob_peer.history("Alice")[-1]["text"] == text
    assert not alice.send(text + "x")  # over the limit: refused before sending
    assert "10,000" in alice.error


def test_exit_takes_the_user_offline(core_proc, bob_peer) -> None:
    alice = logged_in(core_proc.host, core_proc.port, "Alice", "123")
    wait_for(lambda: bob_peer.online("Alice"), what="Alice online")
    alice.close()
    assert alice.phase == "closed"
    wait_for(lambda: not bob_peer.online("Alice"), what="Alice offline")


def test_conversation_merges_by_id() -> None:
    conv = Conversation("Bob")
    assert conv.add([{"id": 5}, {"id": 7}])
    assert conv.add([{"id": 6}, {"id": 7}, {"id": 1}])
    assert not conv.add([{"id": 5}])
    assert [m["id"] for m in conv.messages] == [1, 5, 6, 7]
