"""Waiting on a condition with a deadline: the one helper every test uses.

Tests never sleep and hope; they wait until something observable is true and
fail with what they were waiting for. ``wait_for`` blocks (subprocesses, the
desktop model's ticks); ``until`` awaits, so the loop keeps serving the servers
under test meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_TIMEOUT = 10.0


def _expired(deadline: float, timeout: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    *,
    interval: float = 0.02,
) -> Any:
    """Call ``predicate`` until it returns a truthy value (returned); fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        _expired(deadline, timeout, what)
        time.sleep(interval)


async def until(
    check: Callable[[], Awaitable[Any] | Any],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    *,
    interval: float = 0.01,
) -> Any:
    """Await ``check()`` (plain or async) until it is truthy (returned); fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        _expired(deadline, timeout, what)
        await asyncio.sleep(interval)
