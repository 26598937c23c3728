"""Rate limits: login throttling per user name, and a send bucket per user.

Both take ``now`` (monotonic seconds) from the caller, so the service owns the
clock and tests can move it.
"""

from __future__ import annotations

import logging
from collections import deque

log = logging.getLogger(__name__)

#: This many failures for one name within the window lock that name for
#: LOCKOUT seconds, bounding both guessing and the argon2 CPU an attacker can
#: make us spend (a locked name is refused without hashing).
LOGIN_FAILURES = 5
LOGIN_WINDOW = 60.0
LOGIN_LOCKOUT = 30.0
#: Names tracked at once; past this the table is dropped (name-spraying bound).
MAX_TRACKED_NAMES = 100_000

#: Sending: the protocol demands a burst of at least 500 and 20/s sustained;
#: anything faster from one person is a runaway script.
SEND_BURST = 600
SEND_RATE = 50.0


class LoginThrottle:
    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked_for(self, name: str, now: float) -> float:
        """Seconds ``name`` stays locked (0: it may try)."""
        until = self._locked_until.get(name)
        if until is None:
            return 0.0
        if now < until:
            return until - now
        del self._locked_until[name]
        self._failures.pop(name, None)
        return 0.0

    def failed(self, name: str, now: float) -> None:
        fails = self._failures.setdefault(name, deque())
        fails.append(now)
        while fails and now - fails[0] > LOGIN_WINDOW:
            fails.popleft()
        if len(fails) >= LOGIN_FAILURES:
            self._locked_until[name] = now + LOGIN_LOCKOUT
            log.warning("login for %r locked for %d s after failures", name, LOGIN_LOCKOUT)
        if len(self._failures) > MAX_TRACKED_NAMES:
            self._failures.clear()

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)


class SendBuckets:
    """A token bucket per user: ``burst`` messages at once, ``rate`` per second after."""

    def __init__(self, burst: float = SEND_BURST, rate: float = SEND_RATE) -> None:
        self.burst = burst
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str, now: float) -> bool:
        tokens, last = self._buckets.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[name] = (tokens, now)
            return False
        self._buckets[name] = (tokens - 1, now)
        return True
