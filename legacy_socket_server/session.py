"""A connection's chat state, and the error a chat rule raises."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, ClassVar


class Session:
    """One connection's state. ``send`` delivers out-of-order (held poll) replies."""

    _ids: ClassVar[itertools.count[int]] = itertools.count(1)

    def __init__(
        self,
        send: Callable[[dict[str, Any]], None],
        peer: str = "",
        *,
        client: str = "",
        trusted: bool = False,
        send_packet: Callable[[bytes], None] | None = None,
    ) -> None:
        self.id = next(Session._ids)
        self.send = send
        #: Writes an already framed packet: the fast path of a held poll woken by one
        #: shared event (``ChatService._deliver``). None: every reply goes through ``send``.
        self.send_packet = send_packet
        self.peer = peer
        #: The client's address (IPv4-mapped IPv6 written as IPv4): the key of
        #: per-address limits. ``trusted``: a gateway's connection, whose
        #: ``login`` may name the address of the browser it speaks for.
        self.client = client
        self.trusted = trusted
        self.username: str | None = None
        self.token: str | None = None
        self.cursor = 0
        #: A held poll: its reply's first fields and its slot in ``ChatService.deadlines``.
        self.held: tuple[dict[str, Any], int] | None = None
        #: A held poll with ``stream``: held again after each answer, its keepalive in s.
        self.stream_wait: float | None = None
        self.closed = False
        self.exited = False


class ChatError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
