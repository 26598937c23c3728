"""Rate limits: login throttling per name, a gate on password-hash CPU, send buckets.

The throttle and the buckets take ``now`` (monotonic seconds) from the caller,
so the service owns the clock and tests can move it; the hash gate measures
real hashing time, so it keeps its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

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
#: The contract's floor for any limit an operator sets (docs/protocol.md#limits):
#: clients may count on sending this many at once and this many per second.
MIN_SEND_BURST = 500
MIN_SEND_RATE = 20.0

#: Password checks (argon2, ~35 ms each) may use at most this share of the
#: loop's time once the burst is spent, and at most this many may wait: a
#: class of 100 logging in at once all get in (the last after ~9 s, inside
#: every client's reply timeout); a storm past that is refused unhashed.
HASH_DUTY = 0.5
HASH_BURST_S = 0.05
HASH_MAX_WAITING = 128
#: One client address may hold at most half the waiting room, and waiting
#: checks are taken round-robin across addresses: a storm from one address
#: neither fills the room nor delays another address's login by more than a
#: tick (docs/protocol.md#limits-per-client).
HASH_MAX_WAITING_PER_CLIENT = 64


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
    """A token bucket per user: ``burst`` messages at once, ``rate`` per second after.

    ``rate`` 0 means no limit (benchmarks, like ngircd with its flood penalty off).
    """

    def __init__(self, burst: float = SEND_BURST, rate: float = SEND_RATE) -> None:
        self.burst = burst
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str, now: float) -> bool:
        if not self.rate:
            return True
        tokens, last = self._buckets.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[name] = (tokens, now)
            return False
        self._buckets[name] = (tokens - 1, now)
        return True


class HashGate:
    """Spaces password checks so they never freeze the loop for long, fairly per client.

    argon2 is slow on purpose and, with no threads in the core, runs on the
    event loop: 100 logins arriving together would otherwise run back to back
    in one loop turn (~3.5 s in which nobody else is answered). A check runs at
    once while ``burst`` seconds of hashing credit last; credit comes back at
    ``duty`` seconds per second, and checks past it wait, one queue per client
    address, and run one per timer tick, taken round-robin across addresses,
    so other connections are served between any two and one address's storm
    does not hold up another's login. When ``max_waiting`` already wait, or
    ``max_per_client`` of that address, :meth:`run` refuses (returns ``None``)
    and the caller answers ``rate_limited``. Failures per name are limited
    separately by :class:`LoginThrottle`; this bounds the CPU of a storm
    across many names.
    """

    def __init__(
        self,
        burst: float = HASH_BURST_S,
        duty: float = HASH_DUTY,
        max_waiting: int = HASH_MAX_WAITING,
        max_per_client: int = HASH_MAX_WAITING_PER_CLIENT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.burst = burst
        self.duty = duty
        self.max_waiting = max_waiting
        self.max_per_client = max_per_client
        self._credit = burst
        self._stamp = clock()
        #: Waiting checks per client, and the clients in round-robin order.
        self._queues: dict[object, deque[tuple[Callable[[], Any], asyncio.Future[Any]]]] = {}
        self._turns: deque[object] = deque()
        self._waiting = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return self._waiting

    def run(self, job: Callable[[], Any], client: object = None) -> Any:
        """``job()`` now, or a future of it later, or ``None`` when too many wait."""
        self._refill()
        if not self._waiting and self._credit > 0:
            return self._timed(job)
        if self._waiting >= self.max_waiting:
            return None
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
            self._turns.append(client)
        elif len(queue) >= self.max_per_client:
            return None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue.append((job, fut))
        self._waiting += 1
        self._schedule()
        return fut

    def _refill(self) -> None:
        now = self.clock()
        self._credit = min(self.burst, self._credit + (now - self._stamp) * self.duty)
        self._stamp = now

    def _timed(self, job: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return job()
        finally:
            self._credit -= time.perf_counter() - t0

    def _schedule(self) -> None:
        if self._timer is not None or not self._waiting:
            return
        delay = max(0.0, -self._credit / self.duty) + 0.001
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _next(self) -> tuple[Callable[[], Any], asyncio.Future[Any]] | None:
        """The next waiting check, taking clients in turn; None when none waits."""
        while self._turns:
            client = self._turns.popleft()
            queue = self._queues[client]
            job, fut = queue.popleft()
            self._waiting -= 1
            if queue:
                self._turns.append(client)
            else:
                del self._queues[client]
            if not fut.cancelled():  # else its connection went away: no hashing for nobody
                return job, fut
        return None

    def _tick(self) -> None:
        self._timer = None
        self._refill()
        if self._credit >= 0:
            item = self._next()
            if item is not None:
                job, fut = item
                try:
                    result = self._timed(job)
                except Exception as exc:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
        self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for queue in self._queues.values():
            for _, fut in queue:
                fut.cancel()
        self._queues.clear()
        self._turns.clear()
        self._waiting = 0
