"""The broker circuit breaker, every transition on a FakeClock (nothing sleeps)."""

from __future__ import annotations

import threading
import uuid

import pytest
from prometheus_client import REGISTRY

from common.clock import FakeClock
from engine.breaker import BreakerState, CircuitBreaker, CircuitOpen

SLOW_MS = 1_000.0
RESET_MS = 5_000.0


def gauge(broker: str) -> float | None:
    return REGISTRY.get_sample_value("haexec_broker_circuit_open", {"broker": broker})


class Rig:
    def __init__(self, threshold: int = 3) -> None:
        self.clock = FakeClock()
        self.changes: list[BreakerState] = []
        self.broker = f"t{uuid.uuid4().hex[:8]}"  # a gauge label of this test's own
        self.cb = CircuitBreaker(
            failure_threshold=threshold,
            slow_call_ms=SLOW_MS,
            reset_timeout_ms=RESET_MS,
            clock=self.clock,
            broker=self.broker,
            on_change=self.changes.append,
        )

    def trip(self) -> None:
        for _ in range(self.cb.failure_threshold):
            assert self.cb.allow()
            self.cb.record_failure("timeout")
        assert self.cb.state is BreakerState.OPEN


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_starts_closed_with_gauge_zero(rig: Rig) -> None:
    assert rig.cb.state is BreakerState.CLOSED
    assert rig.cb.allow()
    assert gauge(rig.broker) == 0.0
    assert rig.changes == []


def test_opens_after_threshold_consecutive_failures(rig: Rig) -> None:
    rig.cb.record_failure()
    rig.cb.record_failure()
    assert rig.cb.state is BreakerState.CLOSED and rig.cb.consecutive_failures == 2
    rig.cb.record_failure()
    assert rig.cb.state is BreakerState.OPEN
    assert gauge(rig.broker) == 1.0
    assert rig.changes == [BreakerState.OPEN]
    assert not rig.cb.allow()


def test_success_resets_the_consecutive_count(rig: Rig) -> None:
    rig.cb.record_failure()
    rig.cb.record_failure()
    rig.cb.record_success(duration_ms=10)
    assert rig.cb.consecutive_failures == 0
    rig.cb.record_failure()
    rig.cb.record_failure()
    assert rig.cb.state is BreakerState.CLOSED
    assert rig.changes == []


def test_slow_calls_count_as_failures(rig: Rig) -> None:
    rig.cb.record_success(duration_ms=SLOW_MS - 1)
    assert rig.cb.consecutive_failures == 0
    for _ in range(3):
        rig.cb.record_success(duration_ms=SLOW_MS)
    assert rig.cb.state is BreakerState.OPEN


def test_open_holds_calls_back_until_the_reset_timeout(rig: Rig) -> None:
    rig.trip()
    assert rig.cb.retry_in_ms() == RESET_MS
    rig.clock.advance(RESET_MS - 1)
    assert not rig.cb.allow()
    assert rig.cb.retry_in_ms() == 1
    assert rig.cb.state is BreakerState.OPEN and gauge(rig.broker) == 1.0


def other_thread_allowed(cb: CircuitBreaker) -> bool:
    answer: list[bool] = []
    t = threading.Thread(target=lambda: answer.append(cb.allow()))
    t.start()
    t.join(5.0)
    return answer[0]


def test_half_open_lets_exactly_one_trial_caller_through(rig: Rig) -> None:
    rig.trip()
    rig.clock.advance(RESET_MS)
    assert rig.cb.allow()  # the trial goes to this thread
    assert rig.cb.state is BreakerState.HALF_OPEN
    assert gauge(rig.broker) == 0.0
    assert rig.cb.allow()  # the trial's own thread may check again before its call
    assert not other_thread_allowed(rig.cb)  # everyone else waits for the trial's verdict
    assert rig.changes == [BreakerState.OPEN, BreakerState.HALF_OPEN]


def test_trial_success_closes(rig: Rig) -> None:
    rig.trip()
    rig.clock.advance(RESET_MS)
    assert rig.cb.allow()
    rig.cb.record_success(duration_ms=5)
    assert rig.cb.state is BreakerState.CLOSED
    assert rig.cb.allow() and rig.cb.allow()
    assert gauge(rig.broker) == 0.0
    assert rig.changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    # fully closed again: it takes a whole threshold of failures to re-open
    rig.cb.record_failure()
    assert rig.cb.state is BreakerState.CLOSED


def test_trial_failure_reopens_for_another_timeout(rig: Rig) -> None:
    rig.trip()
    rig.clock.advance(RESET_MS)
    assert rig.cb.allow()
    rig.cb.record_failure("timeout")
    assert rig.cb.state is BreakerState.OPEN and gauge(rig.broker) == 1.0
    assert rig.changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN]
    rig.clock.advance(RESET_MS - 1)
    assert not rig.cb.allow()
    rig.clock.advance(1)
    assert rig.cb.allow()
    assert rig.cb.state is BreakerState.HALF_OPEN


def test_slow_trial_reopens(rig: Rig) -> None:
    rig.trip()
    rig.clock.advance(RESET_MS)
    assert rig.cb.allow()
    rig.cb.record_success(duration_ms=SLOW_MS * 2)
    assert rig.cb.state is BreakerState.OPEN


def test_a_trial_that_never_reports_is_given_up(rig: Rig) -> None:
    rig.trip()
    rig.clock.advance(RESET_MS)
    assert rig.cb.allow()  # this caller dies without reporting
    rig.clock.advance(RESET_MS - 1)
    assert not other_thread_allowed(rig.cb)
    rig.clock.advance(1)
    assert other_thread_allowed(rig.cb)  # a fresh trial, for another thread
    assert rig.cb.state is BreakerState.HALF_OPEN
    assert not rig.cb.allow()  # the first thread's trial is gone


def test_late_failure_while_open_changes_nothing(rig: Rig) -> None:
    rig.trip()
    rig.clock.advance(RESET_MS / 2)
    rig.cb.record_failure("late")
    rig.clock.advance(RESET_MS / 2)
    assert rig.cb.allow()  # the reset timeout still counts from the first opening


def test_guard_records_duration_and_exceptions(rig: Rig) -> None:
    with rig.cb.guard():
        rig.clock.advance(SLOW_MS + 1)  # a slow call
    assert rig.cb.consecutive_failures == 1
    with pytest.raises(RuntimeError), rig.cb.guard():
        raise RuntimeError("venue down")
    assert rig.cb.consecutive_failures == 2
    with rig.cb.guard():
        pass
    assert rig.cb.consecutive_failures == 0
    rig.trip()
    with pytest.raises(CircuitOpen, match="open; retry in 5000 ms"), rig.cb.guard():
        pytest.fail("must not run")


def test_callback_errors_do_not_break_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    def boom(state: BreakerState) -> None:
        raise ValueError("alert sink down")

    cb = CircuitBreaker(failure_threshold=1, clock=FakeClock(), broker="tboom", on_change=boom)
    cb.record_failure()
    assert cb.state is BreakerState.OPEN
    assert "on_change callback failed" in caplog.text


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"slow_call_ms": 0}, {"reset_timeout_ms": -1}])
def test_rejects_nonsense_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(clock=FakeClock(), broker="tbad", **kwargs)  # type: ignore[arg-type]
