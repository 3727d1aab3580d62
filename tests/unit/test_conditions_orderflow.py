"""Order flow guards: book imbalance over N levels, tick-volume imbalance, spoof suspected
(a large order that appears and vanishes within N seconds, remembered across evaluations),
UNKNOWN where the source has no book, the book cannot be read or the quote is stale."""

from __future__ import annotations

from decimal import Decimal

from engine.market.base import Tick
from engine.plans.conditions.base import BookLevel, Truth
from engine.plans.conditions.orderflow import SpoofSuspected
from tests.conditions_support import T0, FakeSnapshot, bars_of, parse, refused, replay, snapshot_at

D = Decimal


def tick(age_ms: int = 0) -> dict[str, Tick]:
    return {"BTCUSD": Tick("BTCUSD", T0, D("64000"), D("64010"), None, age_ms)}


def book(*levels: tuple[str, str, str]) -> list[BookLevel]:
    return [BookLevel(D(p), D(v), side) for side, p, v in levels]


# bids 5 + 3 + 2 (+ 100 on the fourth level), asks 1 + 1 + 2
BOOK = book(
    ("bid", "63990", "5"),
    ("bid", "63980", "3"),
    ("bid", "63970", "2"),
    ("bid", "63960", "100"),
    ("ask", "64010", "1"),
    ("ask", "64020", "1"),
    ("ask", "64030", "2"),
)


def at(now_ms: int, levels: list[BookLevel] | None, age_ms: int = 0) -> FakeSnapshot:
    return FakeSnapshot(now_ms, ticks=tick(age_ms), order_book=levels)


def test_book_imbalance_over_the_best_levels() -> None:
    three = parse({"type": "book_imbalance", "symbol": "BTCUSD", "levels": 3, "above": "0.5"})
    reading = three.evaluate(at(T0, BOOK))
    # (10 - 4) / 14 = 0.4286: the 100 on the fourth bid level is not among the best three
    assert (reading.truth, reading.value) == (Truth.FALSE, "0.4286")
    four = parse({"type": "book_imbalance", "symbol": "BTCUSD", "levels": 4, "above": "0.5"})
    assert four.evaluate(at(T0, BOOK)).value == "0.9298"  # (110 - 4) / 114
    assert four.evaluate(at(T0, BOOK)).truth is Truth.TRUE
    sellers = parse({"type": "book_imbalance", "symbol": "BTCUSD", "levels": 3, "below": "0.5"})
    assert sellers.evaluate(at(T0, BOOK)).truth is Truth.TRUE
    assert three.guard and three.needs() == [("BTCUSD", None)]


def test_no_book_unreadable_one_sided_or_stale_is_unknown() -> None:
    c = parse({"type": "book_imbalance", "symbol": "BTCUSD", "above": "0"})
    assert "has no order book" in c.evaluate(at(T0, None)).detail
    down = at(T0, BOOK)
    down.down = True
    assert c.evaluate(down).truth is Truth.UNKNOWN
    assert c.evaluate(at(T0, book(("bid", "1", "1")))).truth is Truth.UNKNOWN
    stale = c.evaluate(at(T0, BOOK, age_ms=6000))
    assert (stale.truth, stale.age_ms) == (Truth.UNKNOWN, 6000)
    assert c.evaluate(FakeSnapshot(T0, order_book=BOOK)).truth is Truth.UNKNOWN  # no quote at all


def test_tick_volume_imbalance_of_up_and_down_bars() -> None:
    # up bars with 30 and 20 ticks, a down bar with 10, a doji (ignored) with 40
    bars = bars_of(
        [(100, 110, 90, 105, 30), (105, 120, 100, 115, 20), (115, 116, 100, 101, 10), (101, 102, 99, 101, 40)]
    )
    buyers = parse({"type": "tick_volume_imbalance", "symbol": "EURUSD", "timeframe": "M5", "bars": 4, "above": "0.6"})
    reading = buyers.evaluate(snapshot_at(bars, 3))
    assert (reading.truth, reading.value) == (Truth.TRUE, "0.6667")  # (50 - 10) / 60
    assert buyers.evaluate(snapshot_at(bars, 2)).truth is Truth.UNKNOWN  # three bars, four needed
    two = parse({"type": "tick_volume_imbalance", "symbol": "EURUSD", "timeframe": "M5", "bars": 2, "below": "0"})
    assert two.evaluate(snapshot_at(bars, 2)).value == "0.3333"  # (20 - 10) / 30
    flat = parse({"type": "tick_volume_imbalance", "symbol": "EURUSD", "timeframe": "M5", "bars": 1, "above": "0"})
    assert flat.evaluate(snapshot_at(bars, 3)).truth is Truth.UNKNOWN  # only a doji
    # the last two: up 50 (1), up 20 and down 10 (0.3333), down 10 and a doji (-1)
    assert [r.truth for r in replay(two, [bars])] == [Truth.UNKNOWN, Truth.FALSE, Truth.FALSE, Truth.TRUE]


SPOOF = {"type": "spoof_suspected", "symbol": "BTCUSD", "multiple": "5", "within_s": 10, "hold_s": 60}
QUIET = book(("bid", "63990", "2"), ("bid", "63980", "2"), ("ask", "64010", "2"), ("ask", "64020", "2"))
WALL = [*QUIET, BookLevel(D("63970"), D("50"), "bid")]  # 50 >= 5 x the median 2


def test_a_large_order_that_vanishes_quickly_is_suspected_and_remembered() -> None:
    c = parse(SPOOF)
    assert isinstance(c, SpoofSuspected)
    assert c.evaluate(at(T0, QUIET)).truth is Truth.UNKNOWN  # not watched for 10 s yet
    assert c.evaluate(at(T0 + 2000, WALL)).truth is Truth.UNKNOWN
    reading = c.evaluate(at(T0 + 6000, QUIET))  # shown 4 s, then gone
    assert reading.truth is Truth.TRUE and "bid 63970 shown 4.0 s" in reading.detail
    assert c.evaluate(at(T0 + 60_000, QUIET)).truth is Truth.TRUE  # within hold_s
    # evaluations more than within_s apart: what happened between is unknown
    assert c.evaluate(at(T0 + 75_000, QUIET)).truth is Truth.UNKNOWN
    assert c.evaluate(at(T0 + 80_000, QUIET)).truth is Truth.UNKNOWN
    assert c.evaluate(at(T0 + 85_000, QUIET)).truth is Truth.FALSE  # watched 10 s, nothing vanished


def test_a_large_order_that_stays_is_not_a_spoof() -> None:
    c = parse(SPOOF)
    truths = [c.evaluate(at(T0 + s * 1000, WALL if s <= 16 else QUIET)).truth for s in range(0, 21, 4)]
    # the wall stands from 0 s to 16 s (more than 10 s), then goes: not a spoof
    assert truths == [Truth.UNKNOWN, Truth.UNKNOWN, Truth.UNKNOWN, Truth.FALSE, Truth.FALSE, Truth.FALSE]
    assert parse(SPOOF).evaluate(at(T0, None)).truth is Truth.UNKNOWN
    assert c.to_json() == {**SPOOF, "levels": 10, "max_age_ms": 5000}


def test_bad_order_flow_parameters_are_refused_by_name() -> None:
    errors = "; ".join(refused({"type": "book_imbalance", "symbol": "", "levels": 0, "above": "2", "depth": 3}))
    for name in ("symbol", "levels", "above", "depth"):
        assert f"conditions.{name}" in errors, name
    assert "exactly one of above, below" in "; ".join(refused({"type": "book_imbalance", "symbol": "X"}))
    errors = "; ".join(refused({**SPOOF, "within_s": 0, "multiple": "1"}))
    assert "conditions.within_s" in errors and "conditions.multiple" in errors
