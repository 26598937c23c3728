"""Giving memory freed after startup back to the operating system.

Loading history parses the whole snapshot into short-lived objects; once they
are freed, glibc keeps most of that memory in its heap, where the RSS of a
long-running core still counts it (measured: about a third of the RSS per room
membership after a restart, bench/room_memory.py). ``malloc_trim`` returns it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time

log = logging.getLogger(__name__)


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc only; elsewhere nothing to do)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others: no malloc_trim
        return
    started = time.perf_counter()
    trim(0)
    log.debug("malloc_trim took %.1f ms", (time.perf_counter() - started) * 1000)
