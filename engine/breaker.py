"""A circuit breaker for broker calls.

States: ``closed`` (calls flow), ``open`` (calls are held back), ``half_open`` (one trial
call is let through). ``failure_threshold`` consecutive failures -- errors, timeouts, or
calls slower than ``slow_call_ms`` -- open the circuit. While it is open ``allow()`` answers
False: the caller waits and asks again (a signal is *not* failed because the venue is
down; it stays pending until it is executed or expires). Once ``reset_timeout_ms`` has passed,
the next ``allow()`` moves to ``half_open`` and hands the trial to its caller's thread: that
thread keeps getting True (a caller may check ``allow()`` more than once around one call),
every other thread gets False, and the first result recorded decides -- success closes the
circuit, failure (or slowness) opens it again for another ``reset_timeout_ms``. A trial
whose result never comes back (the caller died) is given up after another
``reset_timeout_ms`` and the next caller gets a fresh trial.

What counts as a failure is the caller's decision: for a broker, an exception or an
``Outcome.UNKNOWN`` is a failure; a venue's rejection (``Outcome.REJECTED``) is an answer,
hence a success as far as the circuit is concerned.

Time comes from an injected monotonic ``common.clock.Clock`` (``FakeClock`` in tests).
The gauge ``haexec_broker_circuit_open{broker=...}`` is 1 while open, 0 otherwise; an
optional ``on_change(state)`` callback is told of every transition (alerting hooks in
there; its exceptions are logged and swallowed).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

from common.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("haexec.engine.breaker")

BROKER_CIRCUIT_OPEN = Gauge(
    "haexec_broker_circuit_open",
    "1 while the broker circuit breaker is open (broker calls held back), 0 otherwise",
    ["broker"],
)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """Raised by `CircuitBreaker.guard()` when the circuit does not allow a call now."""

    def __init__(self, broker: str, retry_in_ms: float) -> None:
        super().__init__(f"circuit for broker {broker!r} is open; retry in {retry_in_ms:.0f} ms")
        self.broker = broker
        self.retry_in_ms = retry_in_ms


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 3,
        slow_call_ms: float = 10_000.0,
        reset_timeout_ms: float = 30_000.0,
        clock: Clock = SYSTEM_CLOCK,
        *,
        broker: str = "mt5",
        on_change: Callable[[BreakerState], None] | None = None,
        gauge: Gauge | None = BROKER_CIRCUIT_OPEN,  # None: no series (a breaker per position counts its own)
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if slow_call_ms <= 0 or reset_timeout_ms <= 0:
            raise ValueError("slow_call_ms and reset_timeout_ms must be > 0")
        self.failure_threshold = failure_threshold
        self.slow_call_ms = float(slow_call_ms)
        self.reset_timeout_ms = float(reset_timeout_ms)
        self.broker = broker
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0  # when the circuit last opened
        self._trial_at: float | None = None  # when the half-open trial was handed out
        self._trial_owner: int | None = None  # the thread that holds the trial
        self._gauge = gauge
        if gauge is not None:
            gauge.labels(broker=broker).set(0)

    # -- reading -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def retry_in_ms(self) -> float:
        """How long a caller turned away by `allow()` should wait before asking again."""
        with self._lock:
            now = self._clock.now_ms()
            if self._state is BreakerState.OPEN:
                return max(0.0, self._opened_at + self.reset_timeout_ms - now)
            if self._state is BreakerState.HALF_OPEN and self._trial_at is not None:
                return max(0.0, self._trial_at + self.reset_timeout_ms - now)
            return 0.0

    # -- deciding ------------------------------------------------------------------------

    def allow(self) -> bool:
        """True when a call may be made now. In half-open, True for the trial's thread only."""
        changed: BreakerState | None = None
        with self._lock:
            now = self._clock.now_ms()
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if now - self._opened_at < self.reset_timeout_ms:
                    return False
                changed = self._set(BreakerState.HALF_OPEN)
                self._trial_at, self._trial_owner = now, threading.get_ident()
            else:  # HALF_OPEN: one trial at a time; a trial that never reported is given up
                live = self._trial_at is not None and now - self._trial_at < self.reset_timeout_ms
                if live:
                    return self._trial_owner == threading.get_ident()
                self._trial_at, self._trial_owner = now, threading.get_ident()
        self._notify(changed)
        return True

    def record_success(self, duration_ms: float | None = None) -> None:
        """The call answered. A call slower than `slow_call_ms` counts as a failure."""
        if duration_ms is not None and duration_ms >= self.slow_call_ms:
            self._failure(f"slow call ({duration_ms:.0f} ms >= {self.slow_call_ms:.0f} ms)")
            return
        changed: BreakerState | None = None
        with self._lock:
            self._failures = 0
            if self._state is not BreakerState.CLOSED:
                changed = self._set(BreakerState.CLOSED)
                self._trial_at = self._trial_owner = None
        self._notify(changed)

    def record_failure(self, reason: str = "error") -> None:
        """The call raised, timed out, or its outcome is unknown."""
        self._failure(reason)

    @contextmanager
    def guard(self) -> Iterator[None]:
        """`with breaker.guard(): call()` -- raises `CircuitOpen` when not allowed; records the
        call's duration (slow calls count as failures) and any exception as a failure."""
        if not self.allow():
            raise CircuitOpen(self.broker, self.retry_in_ms())
        started = self._clock.now_ms()
        try:
            yield
        except BaseException as exc:
            self.record_failure(type(exc).__name__)
            raise
        self.record_success(self._clock.now_ms() - started)

    # -- internals -----------------------------------------------------------------------

    def _failure(self, reason: str) -> None:
        changed: BreakerState | None = None
        with self._lock:
            now = self._clock.now_ms()
            if self._state is BreakerState.HALF_OPEN:
                changed = self._set(BreakerState.OPEN)
                self._opened_at = now
                self._trial_at = self._trial_owner = None
            elif self._state is BreakerState.CLOSED:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    changed = self._set(BreakerState.OPEN)
                    self._opened_at = now
            # already OPEN: a late failure of a call made before it opened changes nothing
            failures = self._failures
        if changed is BreakerState.OPEN:
            log.error(
                "broker %s circuit opened after %d consecutive failure(s), last: %s; calls held back for %.0f ms",
                self.broker,
                failures,
                reason,
                self.reset_timeout_ms,
            )
        self._notify(changed)

    def _set(self, state: BreakerState) -> BreakerState:
        """Change state (lock held) and the gauge; returns the new state for `_notify`."""
        self._state = state
        if state is BreakerState.CLOSED:
            self._failures = 0
        if self._gauge is not None:
            self._gauge.labels(broker=self.broker).set(1 if state is BreakerState.OPEN else 0)
        if state is not BreakerState.OPEN:
            log.warning("broker %s circuit %s", self.broker, state.value)
        return state

    def _notify(self, state: BreakerState | None) -> None:
        if state is None or self._on_change is None:
            return
        try:
            self._on_change(state)
        except Exception:
            log.exception("broker %s circuit on_change callback failed", self.broker)
