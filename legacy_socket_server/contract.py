"""The numbers and small rules of the contract, written once (docs/protocol.md).

The core enforces them, the desktop client checks them early so a person gets
a clear message before a round trip, and the gateway sizes its replies by
them; all three import them from here so they cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

#: Longest message text, in Unicode code points (docs/protocol.md#requests-and-replies).
MAX_TEXT_CHARS = 10_000
#: Longest a ``poll`` may be held (``wait_ms``).
MAX_WAIT_MS = 30_000
#: Events in one poll reply. The contract asks for at least 100; more per
#: reply means fewer round trips for a client that fell behind.
MAX_POLL_EVENTS = 500
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 200

#: A cursor is ``epoch << SEQ_BITS | seq`` (docs/protocol.md#events-and-cursors):
#: ``seq`` counts events, ``epoch`` tells runs (core) or sessions (gateway) apart.
SEQ_BITS = 32
SEQ_MASK = (1 << SEQ_BITS) - 1


def is_text(value: str) -> bool:
    """False for a string holding a lone surrogate (``"\\ud800"``).

    JSON lets one through, but it is not text: it cannot be stored as UTF-8 or
    echoed back, so every request field holding one is ``bad_request``.
    """
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def iso_timestamp(now: Callable[[], datetime] | None = None) -> str:
    """A message timestamp: UTC, milliseconds, ``Z`` (``2026-11-24T10:00:00.123Z``).

    ``now``: a clock to read instead of the system's (tests).
    """
    if now is None:
        return _stamps()
    return now().isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: ``.000Z`` … ``.999Z``: a timestamp's end, made once (formatting one was 2 % of the
#: core's time per message).
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


class _Stamps:
    """Timestamps of the system clock, the date and time of day formatted once a second:
    ``datetime.now().isoformat()`` was 6 % of the core's time per message. A busy core
    stamps several messages in one millisecond: they share one string."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._ms = -1
        self._last = ""

    def __call__(self) -> str:
        ms = int(time.time() * 1000)
        if ms == self._ms:
            return self._last
        second = ms // 1000
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        self._ms = ms
        self._last = self._prefix + _MILLIS[ms - second * 1000]
        return self._last


_stamps = _Stamps()


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The key of the conversation between ``a`` and ``b``, the same from either side."""
    return (a, b) if a < b else (b, a)
