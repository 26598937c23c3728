"""Giving memory freed after startup back to the operating system.

Loading history parses the whole snapshot into short-lived objects; once they
are freed, glibc keeps most of that memory in its heap, where the RSS of a
long-running core still counts it (measured: about a third of the RSS per room
membership after a restart, bench/room_memory.py). ``malloc_trim`` returns it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once (None elsewhere: musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The usual name first: find_library runs ldconfig in a subprocess.
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        pass
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def release_free_memory() -> float:
    """Return freed heap pages to the OS (glibc only; elsewhere nothing to do).

    Returns the seconds it took: it runs on the event loop, so callers log it.
    """
    trim = _malloc_trim()
    if trim is None:
        return 0.0
    started = time.perf_counter()
    trim(0)
    took = time.perf_counter() - started
    log.debug("malloc_trim took %.1f ms", took * 1000)
    return took
