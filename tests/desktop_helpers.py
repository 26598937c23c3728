"""Helpers for the desktop client's tests: a blocking peer client and model driving."""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import socket
import time
from collections.abc import Callable
from typing import Any

from waiting import wait_for

from legacy_socket_server.desktop.model import ChatClient
from legacy_socket_server.protocol import FrameDecoder, ProtocolError, encode


class Peer:
    """A second user on a plain blocking socket and the shared codec (no asyncio)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.decoder = FrameDecoder()
        self.inbox: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self.cursor: int | None = None

    def request(self, purpose: str, **fields: Any) -> dict[str, Any]:
        rid = next(self._ids)
        self.sock.sendall(encode({"purpose": purpose, "id": rid, **fields}))
        deadline = time.monotonic() + 10
        while True:
            for k, item in enumerate(self.inbox):
                if item.get("id") == rid:
                    return self.inbox.pop(k)
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply to {purpose}")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            for item in self.decoder.feed(data):
                assert not isinstance(item, ProtocolError), item
                self.inbox.append(item)

    def call(self, purpose: str, **fields: Any) -> dict[str, Any]:
        reply = self.request(purpose, **fields)
        assert reply["ok"] is True, reply
        return reply

    def login(self, name: str, password: str) -> dict[str, Any]:
        reply = self.call("login", username=name, password=password)
        self.cursor = reply["cursor"]
        return reply

    def send(self, to: str, text: str, **fields: Any) -> dict[str, Any]:
        return self.call("send_message", to=to, text=text, **fields)["message"]

    def online(self, name: str) -> bool:
        users = self.call("users")["users"]
        return next(u for u in users if u["username"] == name)["online"]

    def user(self, name: str) -> dict[str, Any]:
        return next(u for u in self.call("users")["users"] if u["username"] == name)

    def history(self, peer: str, **fields: Any) -> list[dict[str, Any]]:
        return self.call("history", **{"with": peer, "limit": 200, **fields})["messages"]

    def close(self) -> None:
        self.sock.close()


def unread_on_server(host: str, port: int, name: str, password: str, peer: str) -> int:
    """``name``'s unread count for ``peer`` as the core reports it to a fresh session."""
    probe = Peer(host, port)
    try:
        probe.login(name, password)
        return probe.user(peer)["unread"]
    finally:
        probe.close()


def drive(
    client: ChatClient, pred: Callable[[], Any], timeout: float = 10.0, what: str = ""
) -> Any:
    """Tick the model until ``pred()`` is truthy (a deadline, never a bare sleep)."""

    def step() -> Any:
        client.tick()
        return pred()

    return wait_for(step, timeout=timeout, interval=0.01, what=what or "the model")


def logged_in(host: str, port: int, name: str, password: str) -> ChatClient:
    client = ChatClient(host, port)
    client.login(name, password)
    drive(client, lambda: client.phase == "ready", what=f"{name} to log in")
    return client


# -- X11 helpers for the window tests ---------------------------------------------------


class _ClientMessage(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("serial", ctypes.c_ulong),
        ("send_event", ctypes.c_int),
        ("display", ctypes.c_void_p),
        ("window", ctypes.c_ulong),
        ("message_type", ctypes.c_ulong),
        ("format", ctypes.c_int),
        ("data", ctypes.c_long * 5),
    ]


class _XEvent(ctypes.Union):
    _fields_ = [("xclient", _ClientMessage), ("pad", ctypes.c_long * 24)]


def close_window(display: str, window: int) -> None:
    """Ask ``window`` to close exactly as a window manager's close button does:
    a WM_PROTOCOLS / WM_DELETE_WINDOW client message (Xvfb has no WM to do it)."""
    xlib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XInternAtom.restype = ctypes.c_ulong
    xlib.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    xlib.XSendEvent.argtypes = [
        ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.POINTER(_XEvent)
    ]  # fmt: skip
    xlib.XFlush.argtypes = [ctypes.c_void_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    dpy = xlib.XOpenDisplay(display.encode())
    assert dpy, f"cannot open X display {display}"
    try:
        event = _XEvent()
        msg = event.xclient
        msg.type = 33  # ClientMessage
        msg.window = window
        msg.message_type = xlib.XInternAtom(dpy, b"WM_PROTOCOLS", 0)
        msg.format = 32
        msg.data[0] = xlib.XInternAtom(dpy, b"WM_DELETE_WINDOW", 0)
        msg.data[1] = 0  # CurrentTime
        assert xlib.XSendEvent(dpy, window, 0, 0, ctypes.byref(event))
        xlib.XFlush(dpy)
    finally:
        xlib.XCloseDisplay(dpy)
