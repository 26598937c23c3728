"""The web app's limits per client: failed logins per address, browser sessions per user,
per address and in all (docs/protocol.md#limits-per-client).

Each browser session is one core connection, so these caps are what keeps
someone who knows a password (or a botnet that does not) from spending the
core's connections and password checks through the web app.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Failed logins one address may make at once, then one more per REFILL
#: seconds (10 a minute): a person mistyping never meets it; a guesser does.
FAILED_LOGIN_BURST = 10
FAILED_LOGIN_REFILL = 6.0
#: Addresses tracked at once; past this the oldest are forgotten (a spray of
#: addresses costs the attacker more than it costs us).
MAX_TRACKED_ADDRESSES = 100_000
#: Browser sessions: per user (as the core's per-user cap: a person's tabs
#: and devices), per address (a school behind one NAT), and in all (below
#: the core's connection cap, leaving room for desktop clients).
MAX_SESSIONS_PER_USER = 32
MAX_SESSIONS_PER_ADDRESS = 256
MAX_SESSIONS = 8_000


class FailedLogins:
    """A token bucket of failed logins per client address."""

    def __init__(
        self,
        burst: int = FAILED_LOGIN_BURST,
        refill: float = FAILED_LOGIN_REFILL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill = refill
        self.clock = clock
        #: address -> (tokens, when counted); insertion order is age order.
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, address: str, now: float) -> float:
        tokens, stamp = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - stamp) / self.refill)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: now)."""
        now = self.clock()
        tokens = self._tokens(address, now)
        if tokens >= 1:
            if tokens >= self.burst:
                self._buckets.pop(address, None)  # forgiven: forget it
            return 0.0
        return (1 - tokens) * self.refill

    def failed(self, address: str) -> None:
        now = self.clock()
        tokens = self._tokens(address, now)
        self._buckets.pop(address, None)
        self._buckets[address] = (max(0.0, tokens - 1), now)
        while len(self._buckets) > MAX_TRACKED_ADDRESSES:
            del self._buckets[next(iter(self._buckets))]
