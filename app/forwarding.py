"""Answering a browser session's requests: forwarded calls, paired lists, polls.

The half of the :class:`~app.gateway.Gateway` that serves a session already held
(the other half starts, resumes and ends sessions). Requests map one-to-one onto
core requests on the session's connection; polls are answered from the session's
event buffer, which its poll stream fills (gateway.py says how).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from legacy_socket_server.client import CoreError, CoreUnavailable

from .buffer import Poll
from .session import BrowserSession, NotLoggedIn

log = logging.getLogger("app.gateway")

#: Tries at pairing a user list with a buffer position before taking the
#: nearest one (each try that fails means a poll reply crossed the request).
USERS_PAIRING_TRIES = 5


class Forwarding:
    """Serving held sessions; mixed into :class:`~app.gateway.Gateway`."""

    #: Set when the web app stops: held polls answer at once.
    closing = False

    async def call(self, session: BrowserSession, purpose: str, **fields: Any) -> dict[str, Any]:
        """Forward one request; raise CoreError, CoreUnavailable or NotLoggedIn."""
        if not session.connected:
            raise CoreUnavailable("reconnecting to the core")
        if purpose == "read":
            # Our tabs share this connection: ask the core to tell it too, so
            # the other tabs hear of the marker through the buffer.
            fields["echo"] = True
        return await session.client.call(purpose, **fields)

    async def users(self, session: BrowserSession) -> dict[str, Any]:
        """The core's user list, with ``cursor`` the buffer position it is exact at."""
        reply, head = await self.listing(session, "users")
        return {"users": reply["users"], "cursor": head}

    async def rooms(self, session: BrowserSession) -> dict[str, Any]:
        """The rooms this user sees, with ``cursor`` the buffer position it is exact at."""
        reply, head = await self.listing(session, "rooms")
        return {"rooms": reply["rooms"], "cursor": head}

    async def listing(self, session: BrowserSession, purpose: str) -> tuple[dict[str, Any], int]:
        """A list request (``users``, ``rooms``) and the buffer position its counts hold at.

        The list reflects every event up to the core cursor in its reply. A
        poll is open at the core whenever this is sent (the stream re-polls as
        soon as a reply is decoded), and the core processes one connection's
        requests in order, so: if no poll reply arrives between sending
        ``users`` and decoding its reply, that poll was held while the core
        built the list, hence every message and read event the list counts was
        already sent to us, and appended, before the list's reply: the
        buffer's head then is the exact position. If a poll reply crossed the
        request, the core may have built the list while events waited for the
        next poll; ask again. (Presence changes may reach the buffer up to
        100 ms after the list shows them; applying one again changes nothing.)
        """
        for _ in range(USERS_PAIRING_TRIES):
            if not session.connected:
                raise CoreUnavailable("reconnecting to the core")
            before = session.poll_replies
            reply, (head, replies) = await session.client.request_stamped(
                purpose, lambda: (session.buffer.head, session.poll_replies)
            )
            if not reply.get("ok"):
                raise CoreError(reply)
            if replies == before:
                break
        else:
            log.info("%s list of %s paired approximately (busy)", purpose, session.username)
        return reply, head

    async def poll(self, session: BrowserSession, cursor: int | None, wait_s: float) -> Poll:
        """Answer a browser poll from the buffer, waiting up to ``wait_s`` for news."""
        buf = session.buffer
        session.polls_in_flight += 1
        session.touch()
        try:
            reply = buf.collect(cursor)
            if reply.events or reply.reset:
                return reply
            if cursor is None:
                cursor = reply.cursor
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while True:
                if session.ended:
                    if session.quiet:  # let go: the next request is served again
                        raise CoreUnavailable("the session moved; try again")
                    raise NotLoggedIn
                if not session.connected:
                    raise CoreUnavailable("reconnecting to the core")
                remaining = deadline - loop.time()
                if remaining <= 0 or self.closing:
                    return reply
                await buf.changed(remaining)
                reply = buf.collect(cursor)
                if reply.events or reply.reset:
                    return reply
        finally:
            session.polls_in_flight -= 1
            session.touch()
