"""TLS on the core's second listener (docs/protocol.md#tls), over real loopback sockets.

The core runs as a subprocess with ``--tls-port 0``: a self-signed certificate it
generates, or an operator's one made by ``trustme``. Clients are ``CoreClient``
(what the gateway and benchmarks use) and raw sockets for the misbehaving ones.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import DEMO_USERS, ROOT, CoreProcess
from waiting import until, wait_for
from web_helpers import expect_error, login, poll_until

from app.config import WebConfig
from app.web import create_app
from legacy_socket_server.client import CoreClient, CoreUnavailable
from legacy_socket_server.protocol import encode
from legacy_socket_server.tls import (
    CERT_FILE,
    KEY_FILE,
    CertFiles,
    CertificateReloader,
    ClientTLS,
    fingerprint,
    fingerprint_of_file,
    parse_fingerprint,
    server_context,
)

FINGERPRINT_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def run_python(*argv: object, **env: object) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` in the repository with ``env`` added; its output captured."""
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        cwd=ROOT,
        env={**os.environ, **{k: str(v) for k, v in env.items()}},
        capture_output=True,
        text=True,
        timeout=30,
    )


def operator_cert(ca: trustme.CA, directory: Path, *names: str) -> tuple[Path, Path]:
    """A certificate for ``names`` signed by ``ca``: (chain file, key file)."""
    issued = ca.issue_cert(*names)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "chain.pem", directory / "key.pem"
    for blob in issued.cert_chain_pems:
        blob.write_to_path(cert, append=cert.exists())
    issued.private_key_pem.write_to_path(key)
    return cert, key


def replace_cert(ca: trustme.CA, cert: Path, key: Path, *names: str) -> None:
    """Renew in place, as an ACME client's deploy hook does (new files, same paths)."""
    issued = ca.issue_cert(*names)
    tmp_cert, tmp_key = cert.with_suffix(".new"), key.with_suffix(".new")
    tmp_cert.write_bytes(b"".join(b.bytes() for b in issued.cert_chain_pems))
    tmp_key.write_bytes(issued.private_key_pem.bytes())
    os.replace(tmp_key, key)
    os.replace(tmp_cert, cert)


async def tls_login(
    core: CoreProcess, name: str, tls: ClientTLS, host: str = "127.0.0.1"
) -> CoreClient:
    client = await CoreClient.connect(host, core.tls_port, tls=tls)
    await client.login(name, DEMO_USERS[name])
    return client


async def next_message(client: CoreClient, cursor: int, timeout: float = 10.0) -> dict:
    async def seen() -> dict | None:
        reply = await client.poll(cursor, wait_ms=1000)
        messages = [e["message"] for e in reply["events"] if e.get("type") == "message"]
        return messages[0] if messages else None

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        got = await seen()
        if got is not None:
            return got
    raise AssertionError(f"no message within {timeout} s")


# -- the generated certificate -------------------------------------------------------------
async def test_chat_over_tls_with_a_pinned_fingerprint(tls_core: CoreProcess) -> None:
    data = tls_core.data_dir
    assert FINGERPRINT_RE.match(tls_core.fingerprint)
    assert fingerprint_of_file(data / CERT_FILE) == tls_core.fingerprint
    assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600

    pin = ClientTLS(fingerprint=tls_core.fingerprint)
    alice = await tls_login(tls_core, "Alice", pin)
    bob = await tls_login(tls_core, "Bob", pin)
    cursor = (await bob.poll()).get("cursor")
    sent = await alice.send_message("Bob", "over TLS ✓")
    got = await next_message(bob, cursor)
    assert (got["id"], got["text"], got["from"]) == (sent["id"], "over TLS ✓", "Alice")
    await alice.close()
    await bob.close()


def test_fingerprint_command_prints_what_the_core_logged(tls_core: CoreProcess) -> None:
    out = run_python(
        "-m", "legacy_socket_server.tls", "fingerprint", CHAT_DATA_DIR=tls_core.data_dir
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == tls_core.fingerprint


def test_fingerprint_command_without_a_certificate_says_how_to_get_one(tmp_path: Path) -> None:
    out = run_python("-m", "legacy_socket_server.tls", "fingerprint", "--data-dir", tmp_path)
    assert out.returncode == 1
    assert "--tls-port" in out.stderr and "Traceback" not in out.stderr


async def test_the_generated_certificate_is_kept_and_resume_works_after_a_restart(
    tls_core: CoreProcess,
) -> None:
    pin = ClientTLS(fingerprint=tls_core.fingerprint)
    client = await CoreClient.connect("127.0.0.1", tls_core.tls_port, tls=pin)
    token = (await client.login("Alice", DEMO_USERS["Alice"]))["token"]
    tls_core.kill()  # no clean shutdown
    tls_core.start()
    assert fingerprint_of_file(tls_core.data_dir / CERT_FILE) == pin.fingerprint
    assert tls_core.fingerprint == pin.fingerprint
    again = await CoreClient.connect("127.0.0.1", tls_core.tls_port, tls=pin)
    resumed = await again.resume(token)
    assert resumed["username"] == "Alice"
    await again.close()
    await client.close()


async def test_a_wrong_pin_or_the_system_store_refuses_the_self_signed_certificate(
    tls_core: CoreProcess,
) -> None:
    with pytest.raises(CoreUnavailable, match="not the pinned"):
        await CoreClient.connect(
            "127.0.0.1", tls_core.tls_port, tls=ClientTLS(fingerprint="sha256:" + "ab" * 32)
        )
    with pytest.raises(CoreUnavailable, match="certificate verify failed"):
        await CoreClient.connect("127.0.0.1", tls_core.tls_port, tls=ClientTLS())
    # Its own certificate as the CA file works: host names are in its subjectAltName.
    ca = ClientTLS(cafile=tls_core.data_dir / CERT_FILE)
    for host in ("127.0.0.1", "localhost"):
        client = await tls_login(tls_core, "Charlie", ca, host=host)
        await client.close()


# -- an operator's certificate ---------------------------------------------------------------
async def test_an_operator_certificate_verified_by_its_ca_with_the_host_name(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    cert, key = operator_cert(ca, tmp_path / "certs", "localhost")
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(cafile)
    core = CoreProcess(
        tmp_path / "data", ["--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    ).start(port=0)
    try:
        assert core.fingerprint == fingerprint_of_file(cert)
        assert not (core.data_dir / CERT_FILE).exists()  # nothing generated
        client = await tls_login(core, "Alice", ClientTLS(cafile=cafile), host="localhost")
        assert (await client.request("ping"))["ok"]
        await client.close()
        # The certificate names localhost only: 127.0.0.1 fails the host-name check.
        with pytest.raises(CoreUnavailable, match="IP address mismatch|doesn't match"):
            await CoreClient.connect("127.0.0.1", core.tls_port, tls=ClientTLS(cafile=cafile))
        # Another CA's file trusts nothing here.
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(other)
        with pytest.raises(CoreUnavailable, match="certificate verify failed"):
            await CoreClient.connect("localhost", core.tls_port, tls=ClientTLS(cafile=other))
    finally:
        core.stop()


async def test_a_renewed_certificate_is_loaded_on_sighup_without_dropping_anyone(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    cert, key = operator_cert(ca, tmp_path / "certs", "localhost", "127.0.0.1")
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(cafile)
    core = CoreProcess(
        tmp_path / "data", ["--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    ).start(port=0)
    try:
        old = core.fingerprint
        bob = await tls_login(core, "Bob", ClientTLS(fingerprint=old))
        cursor = (await bob.poll())["cursor"]

        replace_cert(ca, cert, key, "localhost", "127.0.0.1")
        new = fingerprint_of_file(cert)
        assert new != old
        core.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: f"TLS certificate reloaded: {new}" in core.log_text(), timeout=10)

        # New handshakes get the new certificate...
        alice = await tls_login(core, "Alice", ClientTLS(fingerprint=new))
        with pytest.raises(CoreUnavailable, match="not the pinned"):
            await CoreClient.connect("127.0.0.1", core.tls_port, tls=ClientTLS(fingerprint=old))
        # ...and the connection made before the renewal still chats.
        sent = await alice.send_message("Bob", "after the renewal")
        assert (await next_message(bob, cursor))["id"] == sent["id"]

        # A broken renewal is refused and the live certificate kept.
        cert.write_text("not a certificate\n")
        core.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificate not reloaded" in core.log_text(), timeout=10)
        again = await tls_login(core, "Charlie", ClientTLS(fingerprint=new))
        assert core.proc.poll() is None
        for c in (alice, bob, again):
            await c.close()
    finally:
        core.stop()


def test_a_changed_file_is_noticed_by_the_periodic_check(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = operator_cert(ca, tmp_path, "localhost")
    files = CertFiles(cert, key, generated=False)
    reloader = CertificateReloader(server_context(files), files)
    assert not reloader.check()  # untouched: nothing to do
    before = reloader.fingerprint
    replace_cert(ca, cert, key, "localhost")
    os.utime(cert, (cert.stat().st_atime, cert.stat().st_mtime + 5))  # coarse-mtime file systems
    assert reloader.check()
    assert reloader.fingerprint == fingerprint_of_file(cert) != before


def client_hello() -> bytes:
    """The first flight of a real TLS client, as bytes."""
    outgoing = ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing, server_hostname="localhost"
    )
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# -- the wrong protocol on either port -----------------------------------------------------------
async def test_plaintext_to_the_tls_port_and_tls_to_the_plain_port_fail_and_the_core_stays_up(
    tls_core: CoreProcess,
) -> None:
    login = encode({"purpose": "login", "id": 1, "username": "Alice", "password": "123"})
    with socket.create_connection(("127.0.0.1", tls_core.tls_port), timeout=10) as raw:
        raw.sendall(login)
        answer = b""
        try:
            while chunk := raw.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
        # Whatever comes back is a TLS alert, never a framed reply.
        assert b'"purpose"' not in answer

    with pytest.raises(CoreUnavailable):
        await CoreClient.connect(
            "127.0.0.1", tls_core.port, tls=ClientTLS(fingerprint=tls_core.fingerprint)
        )
    # The plaintext port answers a ClientHello with bad_frame and closes.
    with socket.create_connection(("127.0.0.1", tls_core.port), timeout=10) as raw:
        raw.sendall(client_hello())
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
        assert b'"error":"bad_frame"' in answer

    # Both listeners still serve.
    client = await tls_login(tls_core, "Bob", ClientTLS(fingerprint=tls_core.fingerprint))
    plain = await CoreClient.connect("127.0.0.1", tls_core.port)
    assert (await plain.login("Alice", DEMO_USERS["Alice"]))["ok"]
    await client.close()
    await plain.close()


# -- handshakes that never finish ------------------------------------------------------------------
async def test_two_thousand_stalled_handshakes_do_not_stop_others_and_are_cut(
    tmp_path: Path,
) -> None:
    core = CoreProcess(
        tmp_path / "data", ["--tls-port", "0", "--tls-handshake-timeout", "3"]
    ).start(port=0)
    stalled: list[socket.socket] = []
    try:
        hello = client_hello()
        for i in range(2000):
            s = socket.create_connection(("127.0.0.1", core.tls_port), timeout=10)
            if i % 2:  # half say nothing, half stop in the middle of their ClientHello
                s.sendall(hello[: len(hello) // 2])
            stalled.append(s)

        pin = ClientTLS(fingerprint=core.fingerprint)
        alice = await tls_login(core, "Alice", pin)
        bob = await tls_login(core, "Bob", pin)
        cursor = (await bob.poll())["cursor"]
        sent = await alice.send_message("Bob", "the stalled ones do not hold us up")
        assert (await next_message(bob, cursor))["id"] == sent["id"]

        def cut(s: socket.socket) -> bool:
            s.settimeout(0)
            try:
                return s.recv(1) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        # After the handshake timeout every stalled socket has been closed by the core.
        await until(lambda: all(cut(s) for s in stalled), timeout=30, what="stalled handshakes cut")
        assert core.proc.poll() is None
        for c in (alice, bob):
            await c.close()
    finally:
        for s in stalled:
            s.close()
        core.stop()


# -- settings --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {"CHAT_TLS_PORT": "abc"}, "CHAT_TLS_PORT='abc' (for --tls-port)"),
        (["--tls-key", "k.pem"], {}, "--tls-key (CHAT_TLS_KEY) needs --tls-cert"),
        ([], {"CHAT_TLS_HANDSHAKE_TIMEOUT": "0"}, "expected a positive number"),
    ],
)
def test_bad_tls_settings_are_usage_errors(argv: list[str], env: dict, expected: str) -> None:
    out = run_python("server.py", *argv, **env)
    assert out.returncode == 2
    assert expected in out.stderr and "Traceback" not in out.stderr


def test_an_unusable_certificate_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    out = run_python(
        "server.py",
        "--port",
        "0",
        "--tls-port",
        "0",
        "--tls-cert",
        bad,
        "--data-dir",
        tmp_path / "data",
    )
    assert out.returncode == 2
    assert "not a usable PEM certificate chain" in out.stderr and "Traceback" not in out.stderr
    assert "listening" not in out.stderr


def test_fingerprints_are_normalised_and_checked() -> None:
    der = b"certificate bytes"
    fp = fingerprint(der)
    assert FINGERPRINT_RE.match(fp)
    pasted = fp.removeprefix("sha256:").upper()
    assert parse_fingerprint(":".join(pasted[i : i + 2] for i in range(0, 64, 2))) == fp
    assert parse_fingerprint(pasted) == fp
    for bad in ("sha1:abcd", "sha256:" + "0" * 63, "sha256:" + "g" * 64, ""):
        with pytest.raises(ValueError):
            parse_fingerprint(bad)


# -- the web gateway reaching the core over TLS --------------------------------------------
async def test_the_gateway_reaches_the_core_over_tls_with_a_pinned_certificate(
    tls_core: CoreProcess, aiohttp_client: Any
) -> None:
    pin = ClientTLS(fingerprint=tls_core.fingerprint)
    web = await aiohttp_client(
        create_app(WebConfig(core=("127.0.0.1", tls_core.tls_port), core_tls=pin))
    )
    assert (await web.get("/healthz")).status == 200
    cursor = (await login(web, "Alice"))["cursor"]
    bob = await tls_login(tls_core, "Bob", pin)
    sent = await bob.send_message("Alice", "to the browser, TLS all the way")
    event, _ = await poll_until(
        web, cursor, lambda e: e.get("type") == "message" and e["message"]["id"] == sent["id"]
    )
    assert event["message"]["text"] == "to the browser, TLS all the way"
    resp = await web.post("/api/messages", json={"to": "Bob", "text": "and back"})
    assert resp.status == 200, await resp.text()
    await bob.close()


async def test_the_gateway_refuses_a_core_with_another_certificate(
    tls_core: CoreProcess, aiohttp_client: Any
) -> None:
    wrong = ClientTLS(fingerprint="sha256:" + "00" * 32)
    web = await aiohttp_client(
        create_app(WebConfig(core=("127.0.0.1", tls_core.tls_port), core_tls=wrong))
    )
    assert (await web.get("/healthz")).status == 503
    await expect_error(
        await web.post("/api/login", json={"username": "Alice", "password": "123"}),
        503,
        "core_unavailable",
    )
    # Nothing reached the core: no login was attempted there.
    assert "logged in" not in tls_core.log_text()


def _tls_request_then_close_notify(port: int, packet: bytes) -> bytes:
    """Send ``packet`` and, in the same flight, TLS close_notify; return what comes back."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # what is under test is the reply, not the certificate
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=False)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "the core closed the connection during the handshake"
                incoming.write(data)
        tls.write(packet)
        try:
            tls.unwrap()  # close_notify, without waiting for the core's
        except ssl.SSLWantReadError:
            pass
        sock.sendall(outgoing.read())  # the request and close_notify leave together
        got = b""
        while data := sock.recv(65536):
            incoming.write(data)
            try:
                while chunk := tls.read(65536):
                    got += chunk
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
        return got


def test_a_request_followed_by_close_notify_is_still_answered(tls_core: CoreProcess) -> None:
    """The reply made in the turn that read the client's close_notify goes out before the
    connection closes (replies wait for the end of the loop turn, docs/performance.md)."""
    got = _tls_request_then_close_notify(tls_core.tls_port, encode({"purpose": "ping", "id": 1}))
    assert got == encode({"purpose": "ping", "id": 1, "ok": True})
