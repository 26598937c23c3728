"""Helpers for the desktop client's tests: a blocking peer client and model driving."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable
from typing import Any

from conftest import wait_for

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
