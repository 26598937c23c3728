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


class Refused(Exception):
    """A limit of the web app's own refused the request (``code`` as in the contract)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SessionCaps:
    """Browser sessions counted per address, per user and in all, against their caps.

    An address's slot is reserved before the core is asked (so a flood of
    logins in flight counts too), a user's once the core has said who it is.
    """

    def __init__(
        self,
        per_user: int = MAX_SESSIONS_PER_USER,
        per_address: int = MAX_SESSIONS_PER_ADDRESS,
        total: int = MAX_SESSIONS,
    ) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.total = total
        self._held = 0
        self._by_address: dict[str, int] = {}
        self._by_user: dict[str, int] = {}

    def reserve(self, address: str) -> None:
        """Take a slot for a login from ``address``; :class:`Refused` if none is left."""
        if self._held >= self.total:
            raise Refused("server_busy", "the chat has all the browser sessions it can take now")
        held = self._by_address.get(address, 0)
        if held >= self.per_address:
            raise Refused(
                "too_many_sessions",
                f"your address already has {held} browser sessions, the most allowed; "
                "log out of one and try again",
            )
        self._held += 1
        _count(self._by_address, address, 1)

    def release(self, address: str) -> None:
        self._held -= 1
        _count(self._by_address, address, -1)

    def add_user(self, name: str) -> None:
        """Count a session of ``name`` (its address is reserved); :class:`Refused` if over."""
        open_now = self._by_user.get(name, 0)
        if open_now >= self.per_user:
            raise Refused(
                "too_many_sessions",
                f"{name} already has {open_now} browser sessions, the most allowed; "
                "log out of one (or close a tab) and try again",
            )
        _count(self._by_user, name, 1)

    def drop_user(self, name: str) -> None:
        """Undo :meth:`add_user` (the session did not start after all)."""
        _count(self._by_user, name, -1)

    def remove(self, name: str, address: str) -> None:
        """A session ended: free its user's and its address's places."""
        _count(self._by_user, name, -1)
        self.release(address)


def _count(table: dict[str, int], key: str, delta: int) -> None:
    value = table.get(key, 0) + delta
    if value > 0:
        table[key] = value
    else:
        table.pop(key, None)
