"""The shared bar cache and the Market facade: hit, miss, stale and refused counts; only
what closed since the last close is fetched; stale data only within the age a caller
accepts, with its age; subscriptions to ticks and bar closes. Clocks are injected."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engine.market.base import BadRequest, Bars, FeedUnavailable, StaleData, Tick, Timeframe, UnknownSymbol
from engine.market.metrics import MarketMetrics
from engine.market.service import Market
from engine.market.sim import MINUTE_MS, SimSource
from tests.market_support import MarketClock as Clock

T0 = int(datetime(2026, 3, 4, 12, 0, 30, tzinfo=UTC).timestamp() * 1000)


class Flaky:
    """A sim source that records the bar fetches and fails when told to."""

    def __init__(self, clock: Clock) -> None:
        self.inner = SimSource(seed=3, clock=clock)
        self.name = "sim"
        self.fetches: list[tuple[str, Timeframe, int, int | None]] = []
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("tick", "ticks", "closed_bars", "forming_bar", "spec") and callable(attr):

            def call(*args: Any, **kwargs: Any) -> Any:
                if self.down:
                    raise FeedUnavailable("the terminal is gone")
                if name == "closed_bars":
                    self.fetches.append((args[0], args[1], args[2], kwargs.get("after_ms")))
                return attr(*args, **kwargs)

            return call
        return attr


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def counts(registry: CollectorRegistry) -> dict[str, float]:
    return {
        r: registry.get_sample_value("haexec_market_cache_requests_total", {"result": r}) or 0.0
        for r in ("hit", "miss", "stale", "refused")
    }


def make(registry: CollectorRegistry, max_stale_ms: int = 120_000) -> tuple[Market, Flaky, Clock]:
    clock = Clock(T0)
    source = Flaky(clock)
    return Market(source, max_stale_ms=max_stale_ms, metrics=MarketMetrics(registry)), source, clock  # type: ignore[arg-type]


def test_hit_within_the_bar_miss_fetches_only_what_closed_since(registry: CollectorRegistry) -> None:
    market, source, clock = make(registry)
    first = market.bars("EURUSD", "M1", 100, max_age_ms=1000)
    assert first.closed_count == 100 and first.forming and first.age_ms == 30_000 % 250
    assert source.fetches == [("EURUSD", Timeframe.M1, 100, None)]
    clock.ms += 20_000  # 12:00:50: the same bar is forming, nothing can have closed
    again = market.bars("EURUSD", "M1", 100, max_age_ms=1000)
    assert len(source.fetches) == 1 and counts(registry) == {"hit": 1, "miss": 1, "stale": 0, "refused": 0}
    assert again.closed().time_ms[-1] == first.closed().time_ms[-1]
    clock.ms += 3 * MINUTE_MS  # three bars closed
    later = market.bars("EURUSD", "M1", 100, max_age_ms=1000)
    last = int(first.closed().time_ms[-1])
    assert source.fetches[-1] == ("EURUSD", Timeframe.M1, 100, last)  # only those opened after the last cached
    assert list(later.closed().time_ms[-3:]) == [last + k * MINUTE_MS for k in (1, 2, 3)]
    assert later.closed_count == 100 and counts(registry)["miss"] == 2
    fresh = SimSource(seed=3, clock=clock).closed_bars("EURUSD", Timeframe.M1, 100)
    assert (later.closed().close == fresh.close).all()  # the merged cache is what a fresh read gives


def test_the_forming_bar_rides_on_top(registry: CollectorRegistry) -> None:
    market, source, clock = make(registry)
    bars = market.bars("EURUSD", Timeframe.M5, 10, max_age_ms=1000)
    tick = market.tick("EURUSD", max_age_ms=1000)
    assert bars.forming and bars.prices("close")[-1] == tick.bid
    assert bars.time_ms[-1] == Timeframe.M5.open_of(clock.ms) and len(bars) == 11


def test_stale_within_the_accepted_age_then_refused(registry: CollectorRegistry) -> None:
    market, source, clock = make(registry, max_stale_ms=120_000)
    market.bars("EURUSD", "M1", 50, max_age_ms=1000)
    source.down = True
    clock.ms += 90_000  # a bar closed meanwhile and cannot be fetched
    stale = market.bars("EURUSD", "M1", 50, max_age_ms=100_000)
    assert stale.age_ms == 90_000 and not stale.forming and stale.closed_count == 50
    with pytest.raises(StaleData, match=r"EURUSD M1 bars .*is 90\.000 s old, older than the 60\.000 s accepted"):
        market.bars("EURUSD", "M1", 50, max_age_ms=60_000)
    clock.ms += 60_000  # 150 s: past the cache's own limit, whatever the caller accepts
    with pytest.raises(StaleData, match="older than the 120.000 s accepted"):
        market.bars("EURUSD", "M1", 50, max_age_ms=10**9)
    assert counts(registry) == {"hit": 0, "miss": 1, "stale": 1, "refused": 2}
    with pytest.raises(FeedUnavailable, match="nothing cached and the source failed: the terminal is gone"):
        market.bars("GBPUSD", "M1", 5, max_age_ms=10**6)
    assert registry.get_sample_value("haexec_market_data_up", {"source": "sim"}) == 0
    source.down = False
    recovered = market.bars("EURUSD", "M1", 50, max_age_ms=1000)
    assert recovered.forming and recovered.age_ms < 250 and counts(registry)["miss"] == 2
    assert registry.get_sample_value("haexec_market_data_up", {"source": "sim"}) == 1


def test_a_stale_tick_is_never_served_as_fresh(registry: CollectorRegistry) -> None:
    market, source, clock = make(registry)
    clock.ms = T0 + 200  # 200 ms after the 12:00:30.000 step
    tick = market.tick("EURUSD", max_age_ms=250)
    assert tick.age_ms == 200
    with pytest.raises(StaleData, match=r"^EURUSD tick at 2026-03-04T12:00:30\.000Z is 0\.200 s old"):
        market.tick("EURUSD", max_age_ms=100)
    assert registry.get_sample_value("haexec_market_tick_age_seconds", {"symbol": "EURUSD"}) == 0.2
    with pytest.raises(BadRequest, match="max_age_ms must be an integer >= 0"):
        market.tick("EURUSD", max_age_ms=-1)


def test_bad_requests_name_what_is_wrong(registry: CollectorRegistry) -> None:
    market, _, _ = make(registry)
    with pytest.raises(UnknownSymbol, match="unknown symbol 'NOPE'"):
        market.bars("NOPE", "M1", 5, max_age_ms=1000)
    with pytest.raises(Exception, match=r"timeframe 'M7' does not exist"):
        market.bars("EURUSD", "M7", 5, max_age_ms=1000)
    for count in (0, 1_000_000):
        with pytest.raises(BadRequest, match=r"count must be 1\.\.100000 bars"):
            market.bars("EURUSD", "M1", count, max_age_ms=1000)


def test_subscribers_get_ticks_and_bar_closes_in_order(registry: CollectorRegistry) -> None:
    market, _, clock = make(registry)
    ticks: list[Tick] = []
    bars: list[Bars] = []
    sub = market.subscribe(["EURUSD"], on_tick=ticks.append, on_bar=bars.append, timeframes=["M1", "M5"])
    clock.ms += 1000
    market.pump()
    assert [t.time_ms for t in ticks] == [T0 + 250 * k for k in (1, 2, 3, 4)] and not bars
    clock.ms = T0 + 5 * MINUTE_MS  # 12:05:30: 12:00 .. 12:04 M1 closed, and the 12:00 M5
    market.pump()
    assert [(b.timeframe, b.time_ms[0] - (T0 - 30_000)) for b in bars] == [
        (Timeframe.M1, k * MINUTE_MS) for k in range(5)
    ] + [(Timeframe.M5, 0)]
    assert all(not b.forming and len(b) == 1 for b in bars)
    assert ticks[-1].time_ms == clock.ms and len({t.time_ms for t in ticks}) == len(ticks)
    sub.close()
    clock.ms += MINUTE_MS
    assert market.pump() == 0


def test_a_failing_subscriber_does_not_stop_the_others(registry: CollectorRegistry) -> None:
    market, _, clock = make(registry)
    got: list[Tick] = []

    def broken(_: Tick) -> None:
        raise RuntimeError("bug")

    market.subscribe(["EURUSD"], on_tick=broken)
    market.subscribe(["EURUSD"], on_tick=got.append)
    clock.ms += 500
    market.pump()
    assert len(got) == 2
    with pytest.raises(UnknownSymbol):
        market.subscribe(["XXX"], on_tick=got.append)
