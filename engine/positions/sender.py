"""Sending one stop to the venue, and acting on its answer by meaning.

Per position: a circuit breaker (opens on a failure, a timeout or a call slower than 500 ms;
half-opens after a cool-off; an open one is skipped before any call), at most 2
modifications a second, and one call at a time. The answer: DONE (a change to what it had is
DONE too) is sent; INVALID_STOPS is clamped to the stops level and retried once; FROZEN is
deferred without counting against the breaker (the venue is fine, the position is about to
trigger); GONE is a closed position; anything else is a failure.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from common.clock import Clock
from common.errors import first_line
from coordinator.fencing import EpochSuperseded, NotLeader
from engine.breaker import BreakerState, CircuitBreaker
from engine.brokers.base import Broker, BrokerError, OrderResult, Outcome, Refusal
from engine.model import Side

SLOW_CALL_MS = 500.0
COOL_OFF_MS = 5000.0
MAX_PER_SECOND = 2


class Sent(enum.StrEnum):
    SENT = "sent"  # the venue took it (verified by reading back afterwards)
    DEFERRED = "deferred"  # frozen at the venue: next loop
    SKIPPED = "skipped"  # circuit open or the rate limit: next loop, no call made
    GONE = "gone"  # no such open position
    FAILED = "failed"


@dataclass(frozen=True)
class Answer:
    outcome: Sent
    sl: Decimal | None  # the stop actually sent (after a clamp), when SENT
    detail: str = ""


@dataclass(frozen=True)
class Item:
    """One stop to send: the position, the stop, and what a clamp needs."""

    ticket: str
    side: Side
    sl: Decimal
    price: Decimal | None
    stops_level: int
    point: Decimal


def clamp(side: Side, sl: Decimal, price: Decimal, stops_level_points: int, point: Decimal) -> Decimal:
    """The stop nearest to `sl` that keeps the stops level from the closing price (at least a
    point: a stop at the price itself is on the wrong side)."""
    gap = max(stops_level_points, 1) * point
    return min(sl, price - gap) if side is Side.BUY else max(sl, price + gap)


class Guard:
    """One position's breaker and rate limit."""

    def __init__(self, ticket: str, clock: Clock, cool_off_ms: float) -> None:
        self.breaker = CircuitBreaker(
            failure_threshold=1,
            slow_call_ms=SLOW_CALL_MS,
            reset_timeout_ms=cool_off_ms,
            clock=clock,
            broker=f"position {ticket}",
            gauge=None,
        )
        self._clock = clock
        self._calls: deque[float] = deque(maxlen=MAX_PER_SECOND)

    def rate_allows(self) -> bool:
        return len(self._calls) < MAX_PER_SECOND or self._clock.now_ms() - self._calls[0] >= 1000.0

    def called(self) -> None:
        self._calls.append(self._clock.now_ms())

    @property
    def open(self) -> bool:
        return self.breaker.state is BreakerState.OPEN


class Sender:
    def __init__(
        self,
        broker: Broker,
        clock: Clock,
        fence_venue: Callable[[], int | None],
        cool_off_ms: float = COOL_OFF_MS,
    ) -> None:
        """`fence_venue()` is called right before each call: the epoch to send with, after the
        lease check a venue that cannot fence needs (NotLeader when the lease is short)."""
        self._broker = broker
        self._clock = clock
        self._fence_venue = fence_venue
        self._cool_off_ms = cool_off_ms
        self._guards: dict[str, Guard] = {}
        self._lock = threading.Lock()

    def guard(self, ticket: str) -> Guard:
        with self._lock:
            found = self._guards.get(ticket)
            if found is None:
                found = self._guards[ticket] = Guard(ticket, self._clock, self._cool_off_ms)
            return found

    def forget(self, ticket: str) -> None:
        with self._lock:
            self._guards.pop(ticket, None)

    def open_circuits(self) -> int:
        with self._lock:
            return sum(1 for g in self._guards.values() if g.open)

    def blocked(self, ticket: str) -> bool:
        """Known bad (circuit open, its cool-off not over) or at its rate: skipped before any call."""
        g = self.guard(ticket)
        return (g.open and g.breaker.retry_in_ms() > 0) or not g.rate_allows()

    def send(
        self, ticket: str, side: Side, sl: Decimal, price: Decimal | None, stops_level: int, point: Decimal
    ) -> Answer:
        """Set the stop; EpochSuperseded and NotLeader propagate (this leader must stop)."""
        g = self.guard(ticket)
        if not g.breaker.allow() or not g.rate_allows():
            return Answer(Sent.SKIPPED, None, "circuit open" if g.open else "rate limit")
        result = self._call(g, ticket, sl)
        if result.outcome is Outcome.REJECTED and result.refusal is Refusal.INVALID_STOPS and price is not None:
            clamped = clamp(side, sl, price, stops_level, point)
            if clamped == sl or not g.rate_allows():
                return Answer(Sent.FAILED, None, result.detail)
            sl, result = clamped, self._call(g, ticket, clamped)
        return self._answer(result, sl)

    @property
    def batches(self) -> bool:
        """The venue takes a loop's stops in one call (paper: one fenced transaction)."""
        return hasattr(self._broker, "modify_many")

    def send_many(self, items: list[Item]) -> dict[str, Answer]:
        """`send` for many positions in one venue call (and one more for the clamped retries)."""
        answers: dict[str, Answer] = {}
        allowed = []
        for it in items:
            g = self.guard(it.ticket)
            if not g.breaker.allow() or not g.rate_allows():
                answers[it.ticket] = Answer(Sent.SKIPPED, None, "circuit open" if g.open else "rate limit")
            else:
                allowed.append(it)
        results = self._call_many([(it.ticket, it.sl) for it in allowed])
        retry = []
        for it in allowed:
            result = results[it.ticket]
            if result.outcome is Outcome.REJECTED and result.refusal is Refusal.INVALID_STOPS and it.price is not None:
                clamped = clamp(it.side, it.sl, it.price, it.stops_level, it.point)
                if clamped != it.sl and self.guard(it.ticket).rate_allows():
                    retry.append((it.ticket, clamped))
                    continue
                answers[it.ticket] = Answer(Sent.FAILED, None, result.detail)
                continue
            answers[it.ticket] = self._answer(result, it.sl)
        if retry:
            again = self._call_many(retry)
            for ticket, sl in retry:
                answers[ticket] = self._answer(again[ticket], sl)
        return answers

    def _call_many(self, stops: list[tuple[str, Decimal]]) -> dict[str, OrderResult]:
        if not stops:
            return {}
        epoch = self._fence_venue()
        guards = [self.guard(t) for t, _ in stops]
        for g in guards:
            g.called()
        started = self._clock.now_ms()
        try:
            results: dict[str, OrderResult] = self._broker.modify_many(stops, epoch)  # type: ignore[attr-defined]
        except (EpochSuperseded, NotLeader):
            raise
        except BrokerError as e:
            results = {t: OrderResult(Outcome.UNKNOWN, detail=first_line(e)) for t, _ in stops}
        took = self._clock.now_ms() - started
        for (ticket, _), g in zip(stops, guards, strict=True):
            self._record(g, results[ticket], took)
        return results

    def _call(self, g: Guard, ticket: str, sl: Decimal) -> OrderResult:
        epoch = self._fence_venue()
        g.called()
        started = self._clock.now_ms()
        try:
            result = self._broker.modify(ticket, sl, None, epoch)
        except (EpochSuperseded, NotLeader):
            raise
        except BrokerError as e:
            result = OrderResult(Outcome.UNKNOWN, detail=first_line(e))
        self._record(g, result, self._clock.now_ms() - started)
        return result

    @staticmethod
    def _record(g: Guard, result: OrderResult, took_ms: float) -> None:
        if result.outcome is Outcome.UNKNOWN or (
            result.outcome is Outcome.REJECTED and result.refusal in (Refusal.OTHER, None)
        ):
            g.breaker.record_failure(result.detail or result.outcome.value)
        else:
            g.breaker.record_success(took_ms)  # slower than 500 ms opens it all the same

    @staticmethod
    def _answer(result: OrderResult, sl: Decimal) -> Answer:
        if result.outcome is Outcome.DONE:
            return Answer(Sent.SENT, sl, result.detail)
        if result.refusal is Refusal.FROZEN:
            return Answer(Sent.DEFERRED, None, result.detail)
        if result.refusal is Refusal.GONE:
            return Answer(Sent.GONE, None, result.detail)
        return Answer(Sent.FAILED, None, result.detail or result.outcome.value)
