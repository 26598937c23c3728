"""The real desktop window (``python chatapp.py``) under Xvfb, driven by real X key events.

Each test starts its own Xvfb (``-displayfd`` picks a free display number),
runs ``chatapp.py`` as a subprocess against a real core, types with xdotool,
and checks both the window's state dump (CHAT_DESKTOP_STATE_FILE) and, from
the outside, what the core and a second client see. Screenshots of the login
and chat windows are saved in the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, CoreProcess, require_tool
from desktop_helpers import Peer, close_window, unread_on_server
from waiting import wait_for

SCREEN = "1024x700x24"


@pytest.fixture
def xdisplay(tmp_path: Path) -> Iterator[str]:
    """A private Xvfb; yields its DISPLAY (e.g. ``:17``)."""
    xvfb = require_tool("Xvfb", "the window tests draw on a virtual X display")
    require_tool("xdotool", "the window tests type into the real window")
    require_tool("import", "the window tests take screenshots (imagemagick)")
    read_fd, write_fd = os.pipe()
    log = open(tmp_path / "xvfb.log", "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", SCREEN, "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    os.close(write_fd)
    log.close()
    try:
        # Xvfb writes its display number once it accepts connections.
        ready, _, _ = select.select([read_fd], [], [], 20)
        number = os.read(read_fd, 16).decode().strip() if ready else ""
        assert number, f"Xvfb did not start:\n{(tmp_path / 'xvfb.log').read_text()}"
        yield f":{number}"
    finally:
        os.close(read_fd)
        proc.terminate()
        proc.wait(10)


class DesktopApp:
    """``chatapp.py`` in a subprocess on ``display``, with helpers to drive and inspect it."""

    def __init__(self, display: str, host: str, port: int, tmp_path: Path, *flags: str) -> None:
        self.display = display
        self.tmp_path = tmp_path
        self.state_path = tmp_path / "desktop-state.json"
        self.env = {**os.environ, "DISPLAY": display}
        self.log_path = tmp_path / "desktop.log"
        log = open(self.log_path, "w")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "chatapp.py"), "--host", host, "--port", str(port), *flags],
            cwd=ROOT,
            env={**self.env, "CHAT_DESKTOP_STATE_FILE": str(self.state_path)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.window = wait_for(self._find_window, timeout=20, what="the chat window to map")
        self.wait_state(lambda s: s.get("focus") == "username", "focus in Username")

    def _find_window(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"chatapp.py exited:\n{self.log_path.read_text()}")
        found = subprocess.run(
            ["xdotool", "search", "--onlyvisible", "--name", "^Team Chat"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=10,
        )
        ids = found.stdout.split()
        return int(ids[0]) if ids else None

    def xdo(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], env=self.env, check=True, timeout=20)

    def focus(self) -> None:
        self.xdo("windowfocus", "--sync", str(self.window))

    def type(self, text: str) -> None:
        self.xdo("type", "--delay", "15", text)

    def key(self, *keys: str) -> None:
        self.xdo("key", "--delay", "30", *keys)

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}

    def wait_state(
        self, pred: Callable[[dict[str, Any]], Any], what: str, timeout: float = 15
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"chatapp.py exited:\n{self.log_path.read_text()}")
            state = self.state()
            return state if state and pred(state) else None

        return wait_for(check, timeout=timeout, what=what)

    def screenshot(self, name: str) -> Path:
        """The window as drawn on the X server (a screen grab, not a re-render)."""
        path = self.tmp_path / name
        window = str(self.window)
        subprocess.run(
            ["import", "-window", window, str(path)], env=self.env, check=True, timeout=30
        )
        return path

    def log_in(self, name: str, password: str) -> None:
        self.focus()
        self.type(name)
        self.key("Tab")
        self.wait_state(lambda s: s["focus"] == "password", "Tab to Password")
        self.type(password)
        self.key("Return")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        log = self.log_path.read_text()
        assert "Traceback" not in log and "Exception in Tkinter" not in log, log


@pytest.fixture
def make_app(xdisplay: str, tmp_path: Path) -> Iterator[Callable[[str, int], DesktopApp]]:
    apps: list[DesktopApp] = []

    def start(host: str, port: int) -> DesktopApp:
        apps.append(DesktopApp(xdisplay, host, port, tmp_path))
        return apps[-1]

    yield start
    for app in apps:
        app.stop()


def _last_text(state: dict[str, Any]) -> str | None:
    return state["messages"][-1]["text"] if state.get("messages") else None


def test_log_in_chat_and_close_with_the_keyboard(core_proc, bob_peer, make_app, tmp_path) -> None:
    app = make_app(core_proc.host, core_proc.port)

    # A wrong password: the server's message shows and the person can try again.
    app.log_in("Alice", "wrong")
    state = app.wait_state(lambda s: s["error"], "the refusal")
    assert "wrong user name or password" in state["error"]
    assert state["screen"] == "login" and state["focus"] == "password"
    app.type("123")
    app.screenshot("login.png")
    app.key("Return")

    state = app.wait_state(
        lambda s: s["screen"] == "chat" and s["focus"] == "users", "the user list focused"
    )
    assert [u["username"] for u in state["users"]] == ["Bob", "Charlie"]  # online first
    wait_for(lambda: bob_peer.online("Alice"), what="the core to see Alice online")

    # A message from Bob raises his unread count and the title's total.
    bob_peer.send("Alice", "Hi Alice — café ☕, مرحبا, 👋")
    bob_peer.send("Alice", "Are you joining the demo at three? I saved you a seat.")
    state = app.wait_state(lambda s: s["users"][0]["unread"] == 2, "Bob's unread")
    assert state["title"] == "Team Chat — Alice — 2 unread"
    app.screenshot("unread.png")

    # Keyboard only: Down, Up, Enter opens Bob and puts the cursor in the composer.
    app.key("Down", "Up", "Return")
    state = app.wait_state(
        lambda s: s["peer"] == "Bob" and s["focus"] == "entry" and s["messages"], "open Bob"
    )
    assert _last_text(state) == "Are you joining the demo at three? I saved you a seat."
    assert state["total_unread"] == 0 and state["title"] == "Team Chat — Alice"

    # Enter sends, Shift+Enter is a new line; Enter on an empty field sends nothing.
    app.type("Yes, see you there!")
    app.key("shift+Return")
    app.type("I will bring the slides.")
    app.key("Return")
    answer = "Yes, see you there!\nI will bring the slides."
    wait_for(
        lambda: bob_peer.history("Alice")[-1]["text"] == answer,
        what="the core to store Alice's message",
    )
    app.wait_state(lambda s: s["composer"] == "" and s["pending"] == 0, "composer cleared")
    app.key("Return")

    # A reply appears at once and is marked read on the server.
    bob_peer.send("Alice", "Got it, thanks!")
    app.wait_state(lambda s: _last_text(s) == "Got it, thanks!", "Bob's live reply")
    wait_for(
        lambda: unread_on_server(core_proc.host, core_proc.port, "Alice", "123", "Bob") == 0,
        what="the read marker",
    )
    texts = [m["text"] for m in bob_peer.history("Alice")]
    assert texts == [
        "Hi Alice — café ☕, مرحبا, 👋",
        "Are you joining the demo at three? I saved you a seat.",
        "Yes, see you there!\nI will bring the slides.",
        "Got it, thanks!",
    ]  # the empty Enter sent nothing
    shot = app.screenshot("chat.png")
    if os.environ.get("CHAT_UPDATE_SCREENSHOT"):  # refresh the README's picture
        shutil.copy(shot, ROOT / "docs" / "desktop.png")

    # A 10,000-character message does not freeze the window.
    long_text = ("lorem ipsum dolor sit amet " * 400)[:10_000]
    bob_peer.send("Alice", long_text)
    app.wait_state(lambda s: _last_text(s) == long_text, "the long message")
    app.type("still responsive")
    app.wait_state(lambda s: s["composer"] == "still responsive", "typing after it", timeout=5)
    app.screenshot("long-message.png")

    # Closing the window (as a window manager does) sends exit: Alice goes offline.
    close_window(app.display, app.window)
    assert app.proc.wait(10) == 0
    assert app.state()["phase"] == "closed"
    wait_for(lambda: not bob_peer.online("Alice"), what="the core to see Alice offline")


def test_reconnect_keeps_unsent_text_and_never_doubles(core_proc, bob_peer, make_app) -> None:
    app = make_app(core_proc.host, core_proc.port)
    app.log_in("Alice", "123")
    app.wait_state(lambda s: s["screen"] == "chat" and s["focus"] == "users", "chat screen")
    app.key("Return")
    app.wait_state(lambda s: s["peer"] == "Bob" and s["focus"] == "entry", "open Bob")
    app.type("typed before the outage")

    core_proc.kill()
    state = app.wait_state(lambda s: s["phase"] == "reconnecting", "reconnecting")
    app.wait_state(lambda s: s["title"].endswith("reconnecting…"), "the title to say so")
    app.screenshot("reconnecting.png")
    core_proc.start()
    state = app.wait_state(lambda s: s["phase"] == "ready", "resumed", timeout=30)
    assert state["composer"] == "typed before the outage"
    assert state["screen"] == "chat"

    app.key("Return")
    peer = Peer(core_proc.host, core_proc.port)
    peer.login("Bob", "456")
    wait_for(lambda: peer.history("Alice"), what="the message after the outage")
    app.wait_state(lambda s: s["pending"] == 0, "the send acknowledged")
    assert [m["text"] for m in peer.history("Alice")] == ["typed before the outage"]
    peer.send("Alice", "welcome back")
    app.wait_state(lambda s: _last_text(s) == "welcome back", "live after resume")
    peer.close()


def test_unreachable_server_offers_retry(xdisplay, make_app, tmp_path) -> None:
    with socket.socket() as s:  # a free port, not listening yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = make_app("127.0.0.1", port)
    app.log_in("Alice", "123")
    state = app.wait_state(lambda s: s["phase"] == "unreachable", "the connect failure")
    # Reported from the refusal itself, not after waiting out a connect timeout.
    assert f"127.0.0.1:{port}" in state["error"] and "refused" in state["error"]
    app.screenshot("unreachable.png")

    core = CoreProcess(tmp_path / "late-core").start(port=port)
    try:
        app.key("Return")  # the button now says Retry; the fields are still filled
        app.wait_state(lambda s: s["phase"] == "ready", "login on retry")
    finally:
        app.stop()
        core.stop()


def test_older_history_loads_when_scrolling_to_the_top(core_proc, bob_peer, make_app) -> None:
    for i in range(120):
        bob_peer.send("Alice", f"message {i:03d}")
    app = make_app(core_proc.host, core_proc.port)
    app.log_in("Alice", "123")
    app.wait_state(lambda s: s["screen"] == "chat" and s["focus"] == "users", "chat screen")
    state = app.wait_state(lambda s: s["users"][0]["unread"] == 120, "120 unread")
    app.key("Return")
    state = app.wait_state(lambda s: len(s["messages"]) == 50, "the newest page")
    assert state["messages"][-1]["text"] == "message 119" and state["has_more"]
    # PageUp from the composer scrolls the conversation; reaching the top loads more.
    for _ in range(40):
        app.key("Prior")
        if len(app.state()["messages"]) == 120:
            break
    state = app.wait_state(lambda s: len(s["messages"]) == 120, "all pages")
    assert [m["text"] for m in state["messages"]] == [f"message {i:03d}" for i in range(120)]
    assert not state["has_more"]
    app.screenshot("history.png")
