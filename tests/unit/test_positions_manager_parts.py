"""The manager's parts that need no database: the settings, the clamp to the stops level,
the sender's breaker and rate limit by the venue's answer, and the alert rules' metric names."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from common.clock import FakeClock
from common.errors import ConfigError
from engine.brokers.base import BrokerError, OrderResult, Outcome, Refusal
from engine.model import Side
from engine.positions.metrics import PositionMetrics
from engine.positions.sender import Sender, Sent, clamp
from engine.positions.settings import PositionSettings, position_settings
from tests.support import REPO

D = Decimal


def test_settings() -> None:
    assert position_settings({}) == PositionSettings()
    got = position_settings(
        {"HAEXEC_SL_DEADLINE_MS": "500", "HAEXEC_NAKED_POSITION": "alert", "HAEXEC_MANAGE_EXTERNAL": "yes"}
    )
    assert (got.sl_deadline_ms, got.naked_policy, got.manage_external) == (500, "alert", True)
    for env, name in (
        ({"HAEXEC_SL_DEADLINE_MS": "5"}, "HAEXEC_SL_DEADLINE_MS"),
        ({"HAEXEC_SL_DEADLINE_MS": "１０００"}, "HAEXEC_SL_DEADLINE_MS"),
        ({"HAEXEC_NAKED_POSITION": "ignore"}, "HAEXEC_NAKED_POSITION"),
        ({"HAEXEC_MANAGE_EXTERNAL": "maybe"}, "HAEXEC_MANAGE_EXTERNAL"),
        ({"HAEXEC_RECONCILE_S": "0"}, "HAEXEC_RECONCILE_S"),
    ):
        with pytest.raises(ConfigError) as e:
            position_settings(env)
        assert e.value.setting == name


def test_clamp_keeps_the_stops_level_from_the_closing_price() -> None:
    point = D("0.00001")
    assert clamp(Side.BUY, D("1.09995"), D("1.10000"), 10, point) == D("1.09990")
    assert clamp(Side.BUY, D("1.09000"), D("1.10000"), 10, point) == D("1.09000")  # far enough already
    assert clamp(Side.SELL, D("1.10005"), D("1.10000"), 10, point) == D("1.10010")
    assert clamp(Side.BUY, D("1.10000"), D("1.10000"), 0, point) == D("1.09999")  # never at the price


class Venue:
    fencing_aware = True

    def __init__(self, clock: FakeClock, *answers: OrderResult | Exception, takes_ms: float = 0) -> None:
        self.answers = list(answers)
        self.clock = clock
        self.takes_ms = takes_ms
        self.sent: list[Decimal | None] = []

    def modify(self, ticket: str, sl: Decimal | None, tp: Decimal | None, epoch: int | None = None) -> OrderResult:
        self.sent.append(sl)
        self.clock.advance(self.takes_ms)
        answer = self.answers.pop(0) if self.answers else OrderResult(Outcome.DONE)
        if isinstance(answer, Exception):
            raise answer
        return answer


def sender(venue: Venue, clock: FakeClock) -> Sender:
    return Sender(venue, clock, lambda: 7, cool_off_ms=1000)  # type: ignore[arg-type]


def send(s: Sender, sl: str = "1.09") -> Sent:
    return s.send("1", Side.BUY, D(sl), D("1.1"), 10, D("0.00001")).outcome


def test_frozen_defers_without_tripping_and_a_failure_opens_the_circuit_until_the_cool_off() -> None:
    clock = FakeClock()
    frozen = OrderResult(Outcome.REJECTED, refusal=Refusal.FROZEN)
    venue = Venue(clock, frozen, BrokerError("down"))
    s = sender(venue, clock)
    assert send(s) is Sent.DEFERRED and s.open_circuits() == 0
    clock.advance(1000)
    assert send(s) is Sent.FAILED and s.open_circuits() == 1 and s.blocked("1")
    assert send(s) is Sent.SKIPPED and len(venue.sent) == 2  # no call while open
    clock.advance(1000)
    assert not s.blocked("1") and send(s) is Sent.SENT and s.open_circuits() == 0


def test_a_call_slower_than_500_ms_opens_the_circuit() -> None:
    clock = FakeClock()
    s = sender(Venue(clock, takes_ms=600), clock)
    assert send(s) is Sent.SENT and s.open_circuits() == 1


def test_at_most_two_modifications_a_second_and_one_clamped_retry() -> None:
    clock = FakeClock()
    invalid = OrderResult(Outcome.REJECTED, refusal=Refusal.INVALID_STOPS)
    venue = Venue(clock, invalid)
    s = sender(venue, clock)
    answer = s.send("1", Side.BUY, D("1.09999"), D("1.10000"), 10, D("0.00001"))
    assert (answer.outcome, answer.sl) == (Sent.SENT, D("1.09990")) and venue.sent == [D("1.09999"), D("1.09990")]
    assert send(s) is Sent.SKIPPED  # two calls within this second already
    clock.advance(1000)
    assert send(s) is Sent.SENT


def test_every_metric_the_position_rules_use_is_exported() -> None:
    registry = CollectorRegistry()
    PositionMetrics(registry)
    exported = generate_latest(registry).decode()
    rules = (REPO / "ops" / "prometheus" / "alerts.yml").read_text()
    group = rules[rules.index("name: haexec-positions") :]
    for name in set(re.findall(r"\b(haexec_[a-z_]+)", group)):
        assert re.search(rf"^{name}[{{ ]", exported, re.M), name
