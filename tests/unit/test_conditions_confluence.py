"""Multi-timeframe confluence: an M5-M15 change of character in sync (both within the
window), the window itself, UNKNOWN when a timeframe has no data, the inner condition's
parameters refused with their path, needs() the union, and the replay over both series."""

from __future__ import annotations

from engine.market.base import Bars, Timeframe
from engine.plans.conditions.base import Truth
from engine.plans.conditions.confluence import AsOf, instants
from tests.conditions_support import T0, FakeSnapshot, bars_of, parse, refused, replay
from tests.unit.test_conditions_structure import STRUCTURE

MINUTE = 60_000


def rows(bars: Bars) -> list[tuple[int, int, int, int]]:
    return list(zip(bars.open.tolist(), bars.high.tolist(), bars.low.tolist(), bars.close.tolist(), strict=True))


# the same shape on both timeframes: a change of character down confirmed by bar 10, which
# closes at 10:55 on M5 and at 11:00 on M15 (the M15 series opens at 08:15)
M5 = bars_of(rows(STRUCTURE), timeframe=Timeframe.M5, start_ms=T0)
M15 = bars_of(rows(STRUCTURE), timeframe=Timeframe.M15, start_ms=T0 - 105 * MINUTE)
CHOCH = {"type": "change_of_character", "symbol": "EURUSD", "direction": "down", "k": 1, "within": 1, "lookback": 10}
SYNC = {"type": "confluence", "timeframes": ["M5", "M15"], "window_min": 30, "condition": CHOCH}


def at(now_ms: int, *series: Bars) -> FakeSnapshot:
    return FakeSnapshot(now_ms, {(b.symbol, b.timeframe): b for b in series})


def test_m5_m15_change_of_character_in_sync() -> None:
    sync = parse(SYNC)
    reading = sync.evaluate(at(T0 + 60 * MINUTE, M5, M15))  # M5's at 10:55, M15's at 11:00
    assert reading.truth is Truth.TRUE, reading.detail
    assert reading.value == "M5 true, M15 true"
    assert {(p.timeframe, p.kind) for p in reading.patterns} == {
        (Timeframe.M5, "choch_down"),
        (Timeframe.M15, "choch_down"),
    }
    # at 10:55 M15's is not there yet: FALSE at 10:55 and 10:45, and at 10:30 M15 had 9 of the
    # 10 bars needed, so it cannot say
    assert sync.evaluate(at(T0 + 55 * MINUTE, M5, M15)).value == "M5 true, M15 unknown"
    shorter = parse({**SYNC, "window_min": 20})
    assert shorter.evaluate(at(T0 + 55 * MINUTE, M5, M15)).value == "M5 true, M15 false"
    assert shorter.evaluate(at(T0 + 55 * MINUTE, M5, M15)).truth is Truth.FALSE
    narrow = parse({**SYNC, "window_min": 4})  # M5's at 10:55 is more than 4 minutes before 11:00
    assert narrow.evaluate(at(T0 + 60 * MINUTE, M5, M15)).truth is Truth.FALSE


def test_a_timeframe_without_data_is_unknown() -> None:
    reading = parse(SYNC).evaluate(at(T0 + 60 * MINUTE, M5))
    assert (reading.truth, reading.value) == (Truth.UNKNOWN, "M5 true, M15 unknown")
    assert "M15" in reading.detail


def test_as_of_shows_only_what_had_closed_then() -> None:
    now = at(T0 + 60 * MINUTE, M5)
    then = AsOf(now, T0 + 45 * MINUTE)
    bars = then.bars("EURUSD", Timeframe.M5, 3)
    assert [int(t) for t in bars.time_ms] == [T0 + 30 * MINUTE, T0 + 35 * MINUTE, T0 + 40 * MINUTE]
    assert instants(T0 + 60 * MINUTE, Timeframe.M15, 30 * MINUTE) == [T0 + 60 * MINUTE, T0 + 45 * MINUTE]
    assert instants(T0 + 62 * MINUTE, Timeframe.M15, 30 * MINUTE) == [
        T0 + 62 * MINUTE,
        T0 + 60 * MINUTE,
        T0 + 45 * MINUTE,
    ]


def test_needs_json_and_bad_parameters() -> None:
    sync = parse(SYNC)
    assert sync.needs() == [("EURUSD", Timeframe.M5), ("EURUSD", Timeframe.M15)]
    assert parse(sync.to_json()).to_json() == sync.to_json()
    errors = "; ".join(refused({**SYNC, "timeframes": ["M5"], "window": 3}))
    assert "conditions.timeframes" in errors and "conditions.window" in errors
    assert "conditions.condition" not in errors  # a good inner condition is not blamed for bad timeframes
    assert "conditions.condition.timeframe" in "; ".join(refused({**SYNC, "condition": {**CHOCH, "timeframe": "H1"}}))
    assert "conditions.condition.direction" in "; ".join(refused({**SYNC, "condition": {**CHOCH, "direction": "x"}}))
    assert "conditions.condition.type" in "; ".join(refused({**SYNC, "condition": {"type": "astrology"}}))
    assert "conditions.timeframes" in "; ".join(refused({**SYNC, "timeframes": ["M5", "M5"]}))
    book = {"type": "book_imbalance", "symbol": "EURUSD", "above": "0"}
    assert refused({**SYNC, "condition": book}) == [
        "conditions.condition: book_imbalance takes no timeframe; a condition on bars is required"
    ]


def test_confluence_replays_bar_by_bar() -> None:
    readings = replay(parse({**SYNC, "window_min": 15}), [M5, M15])
    assert [i for i, r in enumerate(readings) if r.truth is Truth.TRUE] == [11, 12]  # 11:00 and 11:05
