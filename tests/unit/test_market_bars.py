"""The bar builder against hand-computed bars: ticks -> M1 and M5 OHLC, a bar closed by the
next bar's first tick and by its end time passing, gaps, coarser bars from finer ones."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from engine.market.bars import BarBuilder, Row, aggregate, to_bars
from engine.market.base import BadInput, Bars, Timeframe, UnknownTimeframe

T = int(datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp() * 1000)  # a Monday, 10:00 UTC
S = 1000

# (time, bid in points, spread in points)
TICKS = [
    (T + 0 * S, 110000, 10),
    (T + 15 * S, 110020, 12),
    (T + 30 * S, 109990, 9),
    (T + 59_999, 110005, 10),
    (T + 60 * S, 110010, 10),  # first tick of 10:01: closes 10:00
    (T + 61 * S, 110030, 11),
    (T + 200 * S, 110000, 10),  # 10:03:20: closes 10:01; 10:02 had no tick, so no bar
]


def build(tf: Timeframe) -> tuple[BarBuilder, list[list[Row]]]:
    b = BarBuilder("EURUSD", tf, 5)
    return b, [b.on_tick(t, bid, spread) for t, bid, spread in TICKS]


def test_m1_bars_close_on_the_next_bars_first_tick() -> None:
    b, closes = build(Timeframe.M1)
    assert [len(c) for c in closes] == [0, 0, 0, 0, 1, 0, 1]
    assert closes[4] == [Row(T, 110000, 110020, 109990, 110005, 4, 9)]
    assert closes[6] == [Row(T + 60 * S, 110010, 110030, 110010, 110030, 2, 10)]
    assert b.forming == Row(T + 180 * S, 110000, 110000, 110000, 110000, 1, 10)


def test_a_bar_closes_when_its_end_time_passes() -> None:
    b, _ = build(Timeframe.M1)
    assert b.advance(T + 240 * S - 1) == []
    assert b.advance(T + 240 * S) == [Row(T + 180 * S, 110000, 110000, 110000, 110000, 1, 10)]
    assert b.forming is None and b.advance(T + 10_000 * S) == []


def test_m5_bar_from_the_same_ticks() -> None:
    b, closes = build(Timeframe.M5)
    assert all(c == [] for c in closes)
    assert b.advance(T + 300 * S - 1) == []
    assert b.advance(T + 300 * S) == [Row(T, 110000, 110030, 109990, 110000, 7, 9)]


def test_aggregating_m1_bars_gives_the_m5_bar() -> None:
    b, closes = build(Timeframe.M1)
    rows = [r for c in closes for r in c] + b.advance(T + 240 * S)
    m1 = to_bars("EURUSD", Timeframe.M1, 5, rows)
    assert list(m1.time_ms) == [T, T + 60 * S, T + 180 * S]
    m5 = aggregate(m1, Timeframe.M5)
    assert (m5.time_ms[0], m5.open[0], m5.high[0], m5.low[0], m5.close[0]) == (T, 110000, 110030, 109990, 110000)
    assert (m5.tick_volume[0], m5.spread[0]) == (7, 9)
    assert m5.prices("high") == (m5.prices("high")[0],) and str(m5.prices("high")[0]) == "1.10030"


def test_bars_cross_a_day_and_an_h4_boundary_at_utc_midnight() -> None:
    midnight = int(datetime(2026, 1, 6, tzinfo=UTC).timestamp() * 1000)
    b = BarBuilder("EURUSD", Timeframe.D1, 5)
    assert b.on_tick(midnight - 1, 100, 1) == []
    closed = b.on_tick(midnight, 101, 1)
    assert closed[0].time_ms == midnight - 86_400_000 and b.forming is not None and b.forming.time_ms == midnight
    assert Timeframe.H4.open_of(midnight + 5 * 3_600_000) == midnight + 4 * 3_600_000


def test_ticks_out_of_order_are_refused_in_one_line() -> None:
    b = BarBuilder("EURUSD", Timeframe.M1, 5)
    b.on_tick(T + 5 * S, 1, 1)
    with pytest.raises(BadInput, match=r"^EURUSD tick at .* is older than the previous one") as e:
        b.on_tick(T, 1, 1)
    assert "\n" not in str(e.value)


def test_aggregate_refuses_a_finer_timeframe_and_keeps_forming() -> None:
    m5 = Bars("X", Timeframe.M5, 2, *(np.array([0]) for _ in range(7)))
    with pytest.raises(BadInput, match="M1 bars cannot be built from M5 bars"):
        aggregate(m5, Timeframe.M1)
    forming = Bars("X", Timeframe.M1, 2, *(np.array([0, 60_000]) for _ in range(7)), forming=True)
    assert aggregate(forming, Timeframe.M5).forming and len(aggregate(forming, Timeframe.M5)) == 1
    assert forming.closed().closed_count == 1 and forming.closed_count == 1


@pytest.mark.parametrize("name", ["M2", "W1", "h1x", ""])
def test_unknown_timeframe_names_the_ones_there_are(name: str) -> None:
    with pytest.raises(UnknownTimeframe, match=r"does not exist \(there are M1, M5, M15, M30, H1, H4, D1\)"):
        Timeframe.parse(name)
    assert Timeframe.parse("h1") is Timeframe.H1
