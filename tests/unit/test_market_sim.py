"""The sim source: a pure function of (seed, time). Two instances and a "restart" agree
to the point; ticks build exactly the bars it serves; DXY moves against EURUSD; spreads,
regimes and news; bad requests are one clear line. Clocks are injected: nothing sleeps."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest

from engine.market.bars import BarBuilder, aggregate
from engine.market.base import BadRequest, Timeframe, TradeMode, UnknownSymbol
from engine.market.sim import MINUTE_MS, STEP_MS, SimSource
from engine.market.simsymbols import DEFAULT_SYMBOLS
from tests.market_support import MarketClock as Clock

T0 = int(datetime(2026, 3, 4, 12, 0, 0, 250_000, tzinfo=UTC).timestamp() * 1000)  # a Wednesday


def sim(seed: int = 42, clock: Callable[[], int] | None = None) -> SimSource:
    return SimSource(seed=seed, clock=clock or Clock(T0))


def test_the_default_symbol_set() -> None:
    s = sim()
    assert s.symbols() == list(DEFAULT_SYMBOLS)
    for name in ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "US500", "BTCUSD", "DXY"):
        assert name in s.symbols()


def test_two_instances_see_the_same_prices() -> None:
    a, b = sim(), sim()
    for sym in DEFAULT_SYMBOLS:
        for t in (T0, T0 + 17, T0 + 3_600_000 + 999, T0 - 86_400_000 * 40):
            assert a.tick_at(sym, t) == b.tick_at(sym, t)
    assert np.array_equal(
        a.closed_bars("EURUSD", Timeframe.M1, 500).close, b.closed_bars("EURUSD", Timeframe.M1, 500).close
    )


def test_a_restart_sees_the_same_prices_whatever_was_computed_before() -> None:
    clock = Clock(T0 + 5 * 3_600_000)
    before = SimSource(seed=42, clock=clock)
    # The first process read other things first, far apart (its caches are full of them).
    before.closed_bars("XAUUSD", Timeframe.D1, 30)
    before.tick_at("EURUSD", T0 - 86_400_000 * 3)
    before.closed_bars("EURUSD", Timeframe.H1, 48)
    want_ticks = [before.tick_at("EURUSD", T0 + k * 7_919) for k in range(200)]
    want_bars = before.closed_bars("EURUSD", Timeframe.M5, 300)
    after = SimSource(seed=42, clock=clock)  # a restarted process, caches empty
    assert [after.tick_at("EURUSD", T0 + k * 7_919) for k in range(200)][::-1] == want_ticks[::-1]
    got = after.closed_bars("EURUSD", Timeframe.M5, 300)
    for column in ("time_ms", "open", "high", "low", "close", "spread"):
        assert np.array_equal(getattr(got, column), getattr(want_bars, column)), column


def test_the_seed_changes_the_path() -> None:
    assert sim(1).tick_at("EURUSD", T0) != sim(2).tick_at("EURUSD", T0)


def test_a_tick_is_the_last_step_at_or_before_the_time_and_carries_its_age() -> None:
    s = sim()
    tick = s.tick_at("EURUSD", T0 + 170)
    assert tick.time_ms == T0 and tick.age_ms == 170
    assert tick.time == datetime(2026, 3, 4, 12, 0, 0, 250_000, tzinfo=UTC)
    assert isinstance(tick.bid, Decimal) and tick.bid.as_tuple().exponent == -5
    assert Decimal("0.9") < tick.bid < tick.ask < Decimal("1.3")
    assert tick.last is None  # FX quotes only
    assert s.tick_at("US500", T0).last is not None


def test_ticks_build_exactly_the_bars_it_serves() -> None:
    clock = Clock(T0 + 10 * MINUTE_MS)
    s = sim(clock=clock)
    news = s.news(T0)
    start = T0 - T0 % MINUTE_MS
    for sym in ("EURUSD", "BTCUSD"):
        ticks = s.ticks(sym, start - 1, start + 10 * MINUTE_MS - 1, 100_000)
        assert len(ticks) == 10 * 240 and ticks.time_ms[1] - ticks.time_ms[0] == STEP_MS
        builder = BarBuilder(sym, Timeframe.M1, ticks.digits)
        rows = []
        for i in range(len(ticks)):
            rows += builder.on_tick(int(ticks.time_ms[i]), int(ticks.bid[i]), int(ticks.ask[i] - ticks.bid[i]))
        rows += builder.advance(start + 10 * MINUTE_MS)
        bars = s.closed_bars(sym, Timeframe.M1, 10)
        got = [
            (int(bars.time_ms[i]), int(bars.open[i]), int(bars.high[i]), int(bars.low[i]), int(bars.close[i]))
            for i in range(10)
        ]
        assert got == [(r.time_ms, r.open, r.high, r.low, r.close) for r in rows]
        assert list(bars.spread) == [r.spread for r in rows]
    assert news is not None  # the day's schedule is readable (it may be empty)


def test_coarser_bars_are_the_aggregate_of_minutes() -> None:
    s = sim(clock=Clock(T0 + 3 * 3_600_000))
    m1 = s.closed_bars("XAUUSD", Timeframe.M1, 240)
    h1 = s.closed_bars("XAUUSD", Timeframe.H1, 3)
    assert h1.time_ms[0] % 3_600_000 == 0
    agg = aggregate(m1, Timeframe.H1)
    for column in ("time_ms", "open", "high", "low", "close", "tick_volume", "spread"):
        assert np.array_equal(getattr(agg, column)[-3:], getattr(h1, column)), column


def test_closed_bars_end_at_the_last_closed_bar_and_the_forming_bar_is_current() -> None:
    clock = Clock(T0 + 25_000)  # 12:00:25.250
    s = sim(clock=clock)
    closed = s.closed_bars("EURUSD", Timeframe.M1, 3)
    assert list(closed.time_ms) == [T0 - 250 - 3 * MINUTE_MS + k * MINUTE_MS for k in range(3)]
    forming = s.forming_bar("EURUSD", Timeframe.M1)
    tick = s.tick("EURUSD")
    assert forming.forming and forming.time_ms[0] == T0 - 250
    assert forming.prices("close")[0] == tick.bid and forming.tick_volume[0] == 102  # 12:00:00.000 .. 12:00:25.250
    h1 = s.forming_bar("EURUSD", Timeframe.H1)
    assert h1.time_ms[0] == T0 - 250 and h1.tick_volume[0] == 102
    assert len(s.closed_bars("EURUSD", Timeframe.M1, 5, after_ms=int(closed.time_ms[-1]))) == 0


def test_dxy_moves_against_eurusd() -> None:
    s = sim(clock=Clock(T0))
    for tf, count in ((Timeframe.M1, 3000), (Timeframe.H1, 24 * 60)):
        eur = np.diff(np.log(s.closed_bars("EURUSD", tf, count).close.astype(float)))
        dxy = np.diff(np.log(s.closed_bars("DXY", tf, count).close.astype(float)))
        corr = float(np.corrcoef(eur, dxy)[0, 1])
        assert corr < -0.7, (tf, corr)
    jpy = np.diff(np.log(s.closed_bars("USDJPY", Timeframe.H1, 1000).close.astype(float)))
    dxy = np.diff(np.log(s.closed_bars("DXY", Timeframe.H1, 1000).close.astype(float)))
    assert float(np.corrcoef(jpy, dxy)[0, 1]) > 0.4


def test_volatility_has_a_daily_rhythm_and_regimes() -> None:
    s = sim(clock=Clock(T0))
    m1 = s.closed_bars("EURUSD", Timeframe.M1, 30 * 1440)
    ranges = (m1.high - m1.low).astype(float)
    hour = (m1.time_ms // 3_600_000) % 24
    asia = ranges[(hour >= 0) & (hour < 6)].mean()
    overlap = ranges[(hour >= 12) & (hour < 16)].mean()
    assert overlap > 1.8 * asia
    regimes = [s.regime(T0 - d * 86_400_000) for d in range(60)]
    assert min(regimes) < 0.8 and max(regimes) > 1.25
    daily = m1.high.reshape(30, 1440).max(axis=1) - m1.low.reshape(30, 1440).min(axis=1)
    assert 300 < statistics.median(daily.tolist()) < 1200  # EURUSD: a day's range of 30 .. 120 pips


def test_spread_is_realistic_and_widens_at_news_and_rollover() -> None:
    s = sim(clock=Clock(T0))
    m1 = s.closed_bars("EURUSD", Timeframe.M1, 10 * 1440)
    assert 6 <= int(np.median(m1.spread)) <= 14
    minute_of_day = (m1.time_ms // MINUTE_MS) % 1440
    rollover = m1.spread[(minute_of_day >= 21 * 60) & (minute_of_day < 22 * 60)]
    assert np.median(rollover) > 1.8 * np.median(m1.spread)
    news = [t for d in range(10) for t in s.news(T0 - d * 86_400_000)]
    assert news, "ten days without a scheduled event"
    at_news = [int(m1.spread[m1.time_ms == t][0]) for t in news if t in set(m1.time_ms.tolist())]
    assert at_news and min(at_news) >= 3 * int(np.median(m1.spread))
    ranges = (m1.high - m1.low).astype(float)
    at = np.isin(m1.time_ms, news)
    assert ranges[at].mean() > 2.5 * ranges.mean()


def test_every_symbol_has_a_full_spec() -> None:
    s = sim()
    for sym in s.symbols():
        spec = s.spec(sym)
        assert spec.point == Decimal(1).scaleb(-spec.digits) and spec.trade_mode is TradeMode.FULL
        assert spec.volume_min <= spec.volume_max and spec.tick_value > 0
    eur, jpy = s.spec("EURUSD"), s.spec("USDJPY")
    assert eur.tick_value == Decimal("1.00000") and eur.contract_size == 100_000 and eur.stops_level == 10
    assert Decimal("0.5") < jpy.tick_value < Decimal("0.8")  # 100,000 x 0.001 JPY in USD at ~150


def test_unknown_symbol_and_bad_counts_are_one_line() -> None:
    s = sim()
    with pytest.raises(UnknownSymbol, match=r"^unknown symbol 'EURUSDX': the sim source has EURUSD, "):
        s.tick("EURUSDX")
    with pytest.raises(UnknownSymbol, match="the sim source has no symbol FOO"):
        SimSource(symbols=["EURUSD", "FOO"])
    for count in (0, -1, 1_000_000):
        with pytest.raises(BadRequest, match=r"^count must be 1\.\.100000 bars \(got "):
            s.closed_bars("EURUSD", Timeframe.M1, count)
    with pytest.raises(BadRequest, match="count must be an integer"):
        s.closed_bars("EURUSD", Timeframe.M1, 2.5)  # type: ignore[arg-type]


def test_it_is_fast() -> None:
    """Loose bounds for a shared machine; `python -m bench.market` measures properly."""
    clock = Clock(T0)
    s = sim(clock=clock)
    s.tick("EURUSD")  # the one-off start-up (a year of daily shocks)
    took = []
    for k in range(200):
        clock.ms = T0 + k * 250
        start = time.perf_counter()
        s.tick("EURUSD")
        took.append(time.perf_counter() - start)
    assert statistics.median(took) < 0.001
    start = time.perf_counter()
    s.closed_bars("GBPUSD", Timeframe.M1, 500)
    assert time.perf_counter() - start < 0.25
