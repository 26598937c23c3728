"""TLS in the real desktop window (``python chatapp.py --tls``) under Xvfb, by keyboard alone.

The harness is the one of tests/test_desktop_window.py (a private Xvfb, real X
key events with xdotool, the window's state dump); without Xvfb/xdotool/
ImageMagick these tests skip on a laptop and fail in CI (``require_tool``).
The core is real, with a generated self-signed certificate, so the system does
not trust it and the window asks (trust on first use). XDG_CONFIG_HOME points
into the test's tmp dir: the known-hosts file written is the test's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_desktop_window as harness
from conftest import CoreProcess
from test_desktop_window import DesktopApp

from legacy_socket_server.desktop.trust import known_hosts_path, short_fingerprint

xdisplay = harness.xdisplay


@pytest.fixture
def start_tls_app(
    xdisplay: str, tmp_path: Path, config_home: Path, tls_core: CoreProcess
) -> Iterator[Callable[..., DesktopApp]]:
    apps: list[DesktopApp] = []

    def start(*flags: str) -> DesktopApp:
        app = DesktopApp(xdisplay, tls_core.host, tls_core.tls_port, tmp_path, *flags)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


def sessions(core: CoreProcess) -> int:
    """Sessions the core started for Alice (it logs each login and resume)."""
    return core.log_text().count("Alice logged in")


def test_first_contact_is_asked_and_accepted_by_keyboard(tls_core, start_tls_app) -> None:
    app = start_tls_app("--tls")
    where = f"127.0.0.1:{tls_core.tls_port}"
    state = app.state()
    assert state["login_security"] == f"TLS to {where}"
    app.screenshot("login-before.png")

    # A wrong password on purpose: the certificate question comes first, and after
    # accepting, the refusal shows the login screen with the encrypted state.
    app.log_in("Alice", "wrong")
    state = app.wait_state(
        lambda s: s["dialog"] == "trust" and s["focus"] == "trust:refuse", "the trust question"
    )
    assert state["trust_question"]["fingerprint"] == tls_core.fingerprint
    assert tls_core.fingerprint in state["dialog_text"] and where in state["dialog_text"]
    assert state["phase"] == "logging_in" and sessions(tls_core) == 0
    assert "wrong user name" not in tls_core.log_text()  # the password was not sent
    app.screenshot("trust-dialog.png")

    # Tab cycles between the two buttons inside the dialog; Enter on Accept accepts.
    app.key("Tab")
    app.wait_state(lambda s: s["focus"] == "trust:accept", "Tab to Accept")
    app.key("shift+Tab")
    app.wait_state(lambda s: s["focus"] == "trust:refuse", "Shift+Tab back to Refuse")
    app.key("Tab")
    app.wait_state(lambda s: s["focus"] == "trust:accept", "Tab to Accept again")
    app.key("Return")
    state = app.wait_state(
        lambda s: s["dialog"] is None and s["phase"] == "logged_out" and s["error"],
        "the wrong password refused over TLS",
    )
    assert "wrong user name or password" in state["error"]
    assert known_hosts_path().read_text() == f"{where} {tls_core.fingerprint}\n"
    summary = state["login_security"]
    assert summary.startswith("Encrypted (TLSv1.")
    assert short_fingerprint(tls_core.fingerprint) in summary
    assert tls_core.fingerprint in state["login_security_details"]
    assert state["focus"] == "password"
    app.screenshot("login-encrypted.png")

    # The right password: remembered now, so no question; the chat screen shows the lock.
    app.type("123")
    app.key("Return")
    state = app.wait_state(lambda s: s["screen"] == "chat" and s["focus"] == "users", "chat")
    assert state["dialog"] is None and state["security"]["verified_by"] == "remembered fingerprint"
    assert state["chat_security"].startswith("Encrypted (TLSv1.")
    assert short_fingerprint(tls_core.fingerprint) in state["chat_security"]
    app.screenshot("chat-encrypted.png")


def test_refusing_by_escape_and_a_changed_certificate_warning(tls_core, start_tls_app) -> None:
    app = start_tls_app("--tls")
    app.log_in("Alice", "123")
    app.wait_state(lambda s: s["dialog"] == "trust", "the trust question")
    app.key("Escape")
    state = app.wait_state(lambda s: s["phase"] == "logged_out", "the refusal")
    assert "you refused the certificate" in state["error"]
    assert state["dialog"] is None and state["focus"] == "password"
    assert not known_hosts_path().exists() and sessions(tls_core) == 0
    app.screenshot("refused.png")

    # This computer remembers another certificate for the server: refused with a warning.
    where = f"127.0.0.1:{tls_core.tls_port}"
    old = "sha256:" + "ab" * 32
    known_hosts_path().parent.mkdir(parents=True, exist_ok=True)
    known_hosts_path().write_text(f"{where} {old}\n")
    app.type("123")
    app.key("Return")
    state = app.wait_state(
        lambda s: s["dialog"] == "warning" and s["focus"] == "warning:close", "the warning"
    )
    assert old in state["dialog_text"] and tls_core.fingerprint in state["dialog_text"]
    assert str(known_hosts_path()) in state["dialog_text"]
    assert "has changed" in state["error"] and sessions(tls_core) == 0
    app.screenshot("changed-warning.png")
    app.key("Escape")
    state = app.wait_state(lambda s: s["dialog"] is None, "the warning closed")
    assert state["focus"] == "password" and state["phase"] == "logged_out"
