"""Lease time: a monotonic clock that keeps counting through suspend.

Wall-clock jumps must never stretch or shorten a lease, and a suspended host must not
come back believing its lease is still young. CLOCK_BOOTTIME has both properties;
time.monotonic (CLOCK_MONOTONIC) stops during suspend, so it is only the fallback on
platforms without CLOCK_BOOTTIME.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

_CLOCK_ID = getattr(time, "CLOCK_BOOTTIME", None)


class Clock(Protocol):
    def now_ms(self) -> float:
        """Milliseconds on a monotonic clock; only differences are meaningful."""
        ...


class BootClock:
    def now_ms(self) -> float:
        if _CLOCK_ID is not None:
            return time.clock_gettime(_CLOCK_ID) * 1000.0
        return time.monotonic() * 1000.0


class FakeClock:
    """A clock that moves only when told to, for tests of timing logic."""

    def __init__(self, start_ms: float = 1_000_000.0) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> float:
        with self._lock:
            return self._now

    def advance(self, ms: float) -> None:
        with self._lock:
            self._now += ms


SYSTEM_CLOCK = BootClock()
