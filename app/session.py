"""One browser session as the gateway holds it (app/gateway.py)."""

from __future__ import annotations

import asyncio

from legacy_socket_server.client import CoreClient

from .buffer import EventBuffer


class NotLoggedIn(Exception):
    """No session, an ended session, or a token the core refused."""


class BrowserSession:
    """One browser session (any number of tabs): a core connection and its buffer."""

    def __init__(
        self, sid: str, username: str, token: str, client: CoreClient, keep: int, address: str
    ) -> None:
        self.sid = sid
        self.username = username
        #: The browser's address (the key of the per-address caps).
        self.address = address
        self.token = token
        self.client = client
        self.buffer = EventBuffer(keep)
        #: Poll replies received on the current connection (see Gateway.users).
        self.poll_replies = 0
        self.connected = True
        self.ended = False
        #: Ended by letting go rather than by a logout (a shared session table): the
        #: browser is still logged in and its next request is served again.
        self.quiet = False
        self.last_poll = asyncio.get_running_loop().time()
        self.polls_in_flight = 0
        self.pump: asyncio.Task[None] | None = None

    def touch(self) -> None:
        self.last_poll = asyncio.get_running_loop().time()
