"""The gateway's link to its terminal: noticing that it is lost and getting it back.

The terminal says it lost its connection in two ways: `terminal_info().connected` false (no
trade server), or calls failing with the "no IPC connection" errors (the terminal went away
or restarted). Either way the gateway re-initialises and logs in again (`MT5Broker.connect`,
on the terminal's one worker, so never concurrently with a call), retrying with a doubling
wait bounded by RECONNECT_MAX_S, for as long as it takes. Meanwhile every mutating call is
refused before anything reaches the terminal (`Disconnected`: 503 `terminal disconnected`),
and `/health` and `haexec_gateway_terminal_connected` say so. Reads are not refused here: they
fail on their own, and one that succeeds is true.

The gateway's prober thread (main.py) drives it: a reading of the terminal every
HAEXEC_GATEWAY_PROBE_MS, and a reconnect attempt whenever one is due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common.errors import first_line
from engine.brokers.base import BrokerError
from engine.brokers.mt5 import IPC_ERRORS, CallFailed

log = logging.getLogger("haexec.gateway.terminal")

RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 5.0


class Disconnected(Exception):
    """The terminal lost its connection and is being reconnected; nothing was sent."""


def is_link_failure(e: BaseException) -> bool:
    """A call that failed because the terminal's IPC link is gone."""
    return isinstance(e, CallFailed) and e.code in IPC_ERRORS


class TerminalLink:
    """Up, or down since a moment and for a reason, with the next reconnect attempt's time."""

    def __init__(
        self,
        reconnect: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        first_wait_s: float = RECONNECT_FIRST_S,
        max_wait_s: float = RECONNECT_MAX_S,
    ) -> None:
        self._reconnect = reconnect
        self._clock = clock
        self._first_wait_s = first_wait_s
        self._max_wait_s = max_wait_s
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._reason = ""
        self._attempts = 0
        self._wait_s = first_wait_s
        self._next_at = 0.0

    @property
    def down(self) -> bool:
        with self._lock:
            return self._down_since is not None

    def describe(self) -> str:
        with self._lock:
            if self._down_since is None:
                return "connected"
            return (
                f"lost {self._clock() - self._down_since:.1f}s ago ({self._reason}); "
                f"reconnecting, {self._attempts} attempt(s) so far"
            )

    def lost(self, reason: str) -> None:
        """The terminal reported a lost connection; the first attempt is due at once."""
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = self._clock()
            self._reason = reason
            self._attempts = 0
            self._wait_s = self._first_wait_s
            self._next_at = self._down_since
        log.error("MT5 terminal connection lost: %s; mutating calls are refused until it is back", reason)

    def check(self) -> None:
        """Raise Disconnected while the link is down (before anything is sent)."""
        if self.down:
            raise Disconnected(f"terminal disconnected: {self.describe()}")

    def due_in(self) -> float:
        """Seconds until the next reconnect attempt (infinite while up)."""
        with self._lock:
            if self._down_since is None:
                return float("inf")
            return max(0.0, self._next_at - self._clock())

    def attempt(self) -> bool:
        """One reconnect attempt if one is due; whether the link is up afterwards."""
        with self._lock:
            if self._down_since is None:
                return True
            if self._reconnect is None or self._clock() < self._next_at:
                return False
            self._attempts += 1
            attempt = self._attempts
        try:
            self._reconnect()
        except BrokerError as e:
            with self._lock:
                self._next_at = self._clock() + self._wait_s
                wait, self._wait_s = self._wait_s, min(self._wait_s * 2, self._max_wait_s)
            log.warning("MT5 reconnect attempt %d failed: %s; next in %.1fs", attempt, first_line(e), wait)
            return False
        with self._lock:
            since = self._down_since
            self._down_since = None
        log.warning(
            "MT5 terminal reconnected after %.1fs (%d attempt(s)): mutating calls accepted again",
            self._clock() - (since or 0.0),
            attempt,
        )
        return True
