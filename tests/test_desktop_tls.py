"""The desktop model (ChatClient) over TLS, against a real core subprocess with ``--tls-port``.

Pinned fingerprints, a CA file (trustme) with the host name checked, trust on
first use with the known-hosts file, a changed certificate, resume after a
restart, and the settings. XDG_CONFIG_HOME points into the test's tmp dir, so
no test touches the real ~/.config/teamchat/known_hosts. "Nothing was sent"
is checked on the core's side: it logs every session it starts ("Alice logged
in", for a login or a resume).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trustme
from conftest import DEMO_USERS, ROOT, CoreProcess
from desktop_helpers import Peer, drive
from waiting import wait_for

from legacy_socket_server.desktop.config import parse_args
from legacy_socket_server.desktop.model import ChatClient
from legacy_socket_server.desktop.trust import TLSOptions, known_hosts_path

WRONG_PIN = "sha256:" + "0" * 64


pytestmark = pytest.mark.usefixtures("config_home")  # known hosts live in tmp


@pytest.fixture
def bob(tls_core: CoreProcess) -> Iterator[Peer]:
    peer = Peer(tls_core.host, tls_core.port)
    peer.login("Bob", DEMO_USERS["Bob"])
    yield peer
    peer.close()


def logins(core: CoreProcess, name: str = "Alice") -> int:
    """Sessions the core started for ``name``: its INFO line per login or resume."""
    return core.log_text().count(f"{name} logged in")


def tls_client(core: CoreProcess, **options: str) -> ChatClient:
    return ChatClient(core.host, core.tls_port, tls=TLSOptions(**options))


def ask(client: ChatClient, password: str = "123") -> None:
    """Start Alice's login and tick until the model asks about the certificate."""
    client.login("Alice", password)
    drive(client, lambda: client.trust_question is not None, what="the trust question")


def known_lines() -> list[str]:
    return known_hosts_path().read_text().splitlines()


def test_pinned_fingerprint_login_and_chat(tls_core, bob) -> None:
    alice = tls_client(tls_core, fingerprint=tls_core.fingerprint)
    assert alice.plan.startswith(f"TLS to 127.0.0.1:{tls_core.tls_port}")
    alice.login("Alice", "123")
    drive(alice, lambda: alice.phase == "ready", what="login over TLS")
    assert alice.trust_question is None
    security = alice.security
    assert security.encrypted and security.version in ("TLSv1.2", "TLSv1.3")
    assert security.fingerprint == tls_core.fingerprint
    assert security.verified_by == "pinned fingerprint"
    assert security.summary.startswith(f"Encrypted ({security.version}) · sha256:")

    # Chat both ways: Alice over TLS, Bob on the plaintext port of the same core.
    alice.open_conversation("Bob")
    drive(alice, lambda: not alice.conv.loading, what="history")
    assert alice.send("over TLS 🔒")
    drive(alice, lambda: alice.pending_count == 0, what="the send acknowledged")
    assert bob.history("Alice")[-1]["text"] == "over TLS 🔒"
    bob.send("Alice", "received, in the clear on my side")
    drive(alice, lambda: alice.messages[-1]["text"].startswith("received"), what="live message")
    long_text = ("é🙂ש" * 3334)[:10_000]  # many TLS records each way
    assert alice.send(long_text)
    drive(alice, lambda: alice.pending_count == 0, what="the long send acknowledged")
    bob.send("Alice", long_text[::-1])
    drive(alice, lambda: alice.messages[-1]["text"] == long_text[::-1], what="the long reply")
    assert bob.history("Alice")[-2]["text"] == long_text
    # A pin that matched is remembered, so a later start with --tls alone is silent.
    assert known_lines() == [f"127.0.0.1:{tls_core.tls_port} {tls_core.fingerprint}"]
    # Quitting sends exit through TLS too: Alice goes offline at once.
    wait_for(lambda: bob.online("Alice"), what="Alice online")
    alice.close()
    wait_for(lambda: not bob.online("Alice"), what="Alice offline")


def test_plaintext_client_says_not_encrypted(tls_core) -> None:
    alice = ChatClient(tls_core.host, tls_core.port)
    assert alice.plan == f"Plaintext to 127.0.0.1:{tls_core.port} · not encrypted"
    alice.login("Alice", "123")
    drive(alice, lambda: alice.phase == "ready", what="plaintext login")
    assert alice.security.summary == "Not encrypted"
    assert not known_hosts_path().exists()


def test_wrong_pin_is_refused_before_the_password_is_sent(tls_core) -> None:
    alice = tls_client(tls_core, fingerprint=WRONG_PIN)
    alice.login("Alice", "123")
    drive(alice, lambda: alice.phase == "logged_out", what="the refusal")
    refusal = alice.refusal
    assert refusal.kind == "pin" and alice.error == refusal.summary
    assert WRONG_PIN in refusal.details and tls_core.fingerprint in refusal.details
    assert logins(tls_core) == 0
    assert not known_hosts_path().exists()
    # Refused for good: no retry loop runs behind the login screen.
    for _ in range(20):
        assert not alice.tick() and alice.phase == "logged_out"


def test_ca_file_verifies_the_chain_and_the_host_name(tmp_path) -> None:
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(cafile)
    cert_file = tmp_path / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert_file)
    core = CoreProcess(
        tmp_path / "data", extra_args=["--tls-port", "0", "--tls-cert", str(cert_file)]
    ).start(port=0)
    try:
        alice = tls_client(core, cafile=str(cafile))
        alice.login("Alice", "123")
        drive(alice, lambda: alice.phase == "ready", what="login verified by the CA file")
        assert alice.security.verified_by == "CA file"
        assert alice.security.fingerprint == core.fingerprint
        alice.close()

        # Another CA's file does not vouch for it: refused, nothing sent, no question.
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(other)
        stranger = tls_client(core, cafile=str(other))
        stranger.login("Alice", "123")
        drive(stranger, lambda: stranger.phase == "logged_out", what="an untrusted chain")
        assert stranger.refusal.kind == "cafile"
        assert "certificate verify failed" in stranger.error or "issuer" in stranger.error

        # The same CA, a certificate for another name: the host name check refuses it.
        ca.issue_cert("chat.example.org").private_key_and_cert_chain_pem.write_to_path(cert_file)
        core.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificate reloaded" in core.log_text(), what="the reload")
        before = logins(core)
        wrong_name = tls_client(core, cafile=str(cafile))
        wrong_name.login("Alice", "123")
        drive(wrong_name, lambda: wrong_name.phase == "logged_out", what="a host name mismatch")
        assert wrong_name.refusal.kind == "cafile"
        assert "mismatch" in wrong_name.error and "127.0.0.1" in wrong_name.error
        assert wrong_name.trust_question is None
        assert logins(core) == before
    finally:
        core.stop()


def test_trust_on_first_use_asks_once_then_remembers(tls_core) -> None:
    alice = tls_client(tls_core)
    assert alice.plan == f"TLS to 127.0.0.1:{tls_core.tls_port}"
    ask(alice)
    question = alice.trust_question
    assert (question.host, question.port) == ("127.0.0.1", tls_core.tls_port)
    assert question.fingerprint == tls_core.fingerprint
    assert "self-signed" in question.reason
    # While the person decides: logging in, and the core has seen no login.
    assert alice.phase == "logging_in" and logins(tls_core) == 0
    assert not known_hosts_path().exists()

    alice.answer_trust(True)
    assert alice.trust_question is None
    drive(alice, lambda: alice.phase == "ready", what="the login after accepting")
    assert alice.security.verified_by == "accepted by you"
    assert known_lines() == [f"127.0.0.1:{tls_core.tls_port} {tls_core.fingerprint}"]
    alice.close()

    # The next start trusts the remembered fingerprint without a word.
    again = tls_client(tls_core)
    again.login("Alice", "123")

    def ready_without_asking() -> bool:
        assert again.trust_question is None, "asked again about a remembered certificate"
        return again.phase == "ready"

    drive(again, ready_without_asking, what="a silent login")
    assert again.security.verified_by == "remembered fingerprint"
    assert again.security.fingerprint == tls_core.fingerprint


def test_refusing_the_certificate_sends_nothing(tls_core) -> None:
    alice = tls_client(tls_core)
    ask(alice)
    alice.answer_trust(False)
    assert alice.phase == "logged_out" and alice.trust_question is None
    assert alice.refusal.kind == "refused"
    assert "you refused the certificate of 127.0.0.1" in alice.error
    for _ in range(20):
        alice.tick()
    assert alice.phase == "logged_out"
    assert logins(tls_core) == 0
    assert not known_hosts_path().exists()
    # Logging in again is a new, deliberate attempt: it asks again.
    ask(alice)
    alice.answer_trust(True)
    drive(alice, lambda: alice.phase == "ready", what="login after accepting")


def test_changed_certificate_is_refused_with_both_fingerprints(tls_core, tmp_path) -> None:
    alice = tls_client(tls_core)
    ask(alice)
    alice.answer_trust(True)
    drive(alice, lambda: alice.phase == "ready", what="first login")
    alice.close()
    old = tls_core.fingerprint

    # Another core (another data dir: another generated certificate) on the same ports.
    tls_core.stop()
    impostor = CoreProcess(
        tmp_path / "other", extra_args=["--tls-port", str(tls_core.tls_port)]
    ).start(port=tls_core.port)
    try:
        new = impostor.fingerprint
        assert new != old
        client = tls_client(impostor)
        client.login("Alice", "123")
        drive(client, lambda: client.phase == "logged_out", what="the refusal")
        refusal = client.refusal
        assert refusal.kind == "changed" and (refusal.old, refusal.new) == (old, new)
        assert old in refusal.details and new in refusal.details
        where = f"127.0.0.1:{impostor.tls_port}"
        assert f"remove the line for {where} from {known_hosts_path()}" in refusal.details
        assert f"--fingerprint {new}" in refusal.details
        assert "has changed" in client.error and client.trust_question is None
        assert logins(impostor) == 0
        assert known_lines() == [f"{where} {old}"]  # the warning changes nothing

        # Accepting deliberately: a run with the new fingerprint pinned replaces the line,
        # after which --tls alone is silent again.
        pinned = tls_client(impostor, fingerprint=new)
        pinned.login("Alice", "123")
        drive(pinned, lambda: pinned.phase == "ready", what="login with the new pin")
        pinned.close()
        assert known_lines() == [f"{where} {new}"]
        plain_tls = tls_client(impostor)
        plain_tls.login("Alice", "123")
        drive(plain_tls, lambda: plain_tls.phase == "ready", what="a silent login")
        assert plain_tls.security.verified_by == "remembered fingerprint"
    finally:
        impostor.stop()


def test_resume_over_tls_after_a_restart_and_stop_on_a_changed_certificate(
    tls_core, tmp_path
) -> None:
    known_hosts_path().parent.mkdir(parents=True)
    known_hosts_path().write_text(f"127.0.0.1:{tls_core.tls_port} {tls_core.fingerprint}\n")
    alice = tls_client(tls_core)
    alice.login("Alice", "123")
    drive(alice, lambda: alice.phase == "ready", what="login with a remembered certificate")
    alice.open_conversation("Bob")
    drive(alice, lambda: not alice.conv.loading, what="history")

    # The same core again (same data dir, same certificate): resumes silently.
    tls_core.kill()
    drive(alice, lambda: alice.phase == "reconnecting", what="reconnecting")
    assert alice.send("typed while the core was down")
    tls_core.start()
    drive(alice, lambda: alice.phase == "ready" and alice.pending_count == 0, timeout=30)
    assert alice.trust_question is None and alice.security.encrypted
    assert logins(tls_core) == 2  # the login, then the resume (the model keeps no password)
    peer = Peer(tls_core.host, tls_core.port)
    peer.login("Bob", DEMO_USERS["Bob"])
    assert [m["text"] for m in peer.history("Alice")] == ["typed while the core was down"]
    peer.send("Alice", "welcome back")
    drive(alice, lambda: alice.messages[-1]["text"] == "welcome back", what="live after resume")
    peer.close()

    # A different certificate during a reconnect: stop and warn, no endless retries.
    tls_core.kill()
    drive(alice, lambda: alice.phase == "reconnecting", what="reconnecting")
    other = CoreProcess(
        tmp_path / "other", extra_args=["--tls-port", str(tls_core.tls_port)]
    ).start(port=tls_core.port)
    try:
        drive(alice, lambda: alice.phase == "logged_out", timeout=30, what="the refusal")
        assert alice.refusal.kind == "changed"
        assert tls_core.fingerprint in alice.refusal.details
        assert other.fingerprint in alice.refusal.details
        for _ in range(20):
            alice.tick()
        assert alice.phase == "logged_out" and alice.trust_question is None
        assert logins(other) == 0  # the token never reached the other server
    finally:
        other.stop()


def test_tls_to_the_plaintext_port_fails_clearly_and_never_falls_back(tls_core) -> None:
    alice = ChatClient(tls_core.host, tls_core.port, tls=TLSOptions(fingerprint=WRONG_PIN))
    alice.login("Alice", "123")
    drive(alice, lambda: alice.phase == "unreachable", what="the failed handshake")
    assert "TLS handshake failed" in alice.error and "TLS port" in alice.error
    assert logins(tls_core) == 0


def test_a_server_that_never_handshakes_times_out() -> None:
    with socket.socket() as silent:  # accepts (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        alice = ChatClient("127.0.0.1", port, tls=TLSOptions(), connect_timeout=0.5)
        alice.login("Alice", "123")
        drive(alice, lambda: alice.phase == "unreachable", what="the handshake timeout")
        assert "timed out" in alice.error and "TLS" in alice.error


# -- settings ---------------------------------------------------------------------------
def test_tls_settings_and_their_default_port() -> None:
    assert (parse_args([], env={}).tls, parse_args([], env={}).port) == (False, 5050)
    config = parse_args(["--tls"], env={})
    assert (config.tls, config.port, config.tls_options) == (True, 5051, TLSOptions())
    assert parse_args([], env={"CHAT_TLS": "1"}).port == 5051
    assert parse_args(["--tls", "--port", "6000"], env={}).port == 6000
    assert parse_args([], env={"CHAT_TLS": "1", "CHAT_PORT": "6001"}).port == 6001
    assert parse_args([], env={"CHAT_TLS": "0"}).tls_options is None
    pin = "SHA256:" + "AB:" * 31 + "CD"  # as pasted from openssl
    config = parse_args(["--fingerprint", pin], env={})
    assert config.tls and config.port == 5051
    assert config.fingerprint == "sha256:" + "ab" * 31 + "cd"


def test_cafile_implies_tls(tmp_path) -> None:
    cafile = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(cafile)
    config = parse_args([], env={"CHAT_CAFILE": str(cafile)})
    assert config.tls and config.port == 5051 and config.cafile == str(cafile)


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        ([], {"CHAT_FINGERPRINT": "sha256:1234"}, "CHAT_FINGERPRINT"),
        (["--fingerprint", "md5:00"], {}, "--fingerprint"),
        (["--cafile", "/no/such/ca.pem"], {}, "no such file"),
        ([], {"CHAT_CAFILE": __file__}, "not a PEM CA certificate file"),
        ([], {"CHAT_TLS": "maybe"}, "CHAT_TLS"),
    ],
)
def test_bad_tls_settings_are_usage_errors(args, env, says, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(args, env=env)
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


def test_bad_fingerprint_in_the_environment_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, "chatapp.py"],
        cwd=ROOT,
        env={"CHAT_FINGERPRINT": "sha256:nothex", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "CHAT_FINGERPRINT" in done.stderr and "Traceback" not in done.stderr


def test_the_plaintext_mark_puts_the_address_on_its_own_line_in_the_sidebar() -> None:
    from legacy_socket_server.desktop import model
    from legacy_socket_server.desktop.trust import Security
    from legacy_socket_server.desktop.window import security_line

    client = model.ChatClient("chat.example.org", 5050)
    client.security = Security(encrypted=False)
    assert security_line(client, wide=True)[0] == "Not encrypted · chat.example.org:5050"
    # The sidebar is narrow: the port used to be cut off.
    assert security_line(client, wide=False)[0] == "Not encrypted\nchat.example.org:5050"
