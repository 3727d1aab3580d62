"""How old a replica's feed is (FeedWatch): the latest tick the pump delivered per watched
symbol, on /health as one line and as haexec_market_tick_age_seconds computed at each
scrape; and the sim's caches shared by the threads that read one source."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engine.market import FeedUnavailable, Market, MarketSpec, Tick, TradeMode
from engine.market.metrics import MarketMetrics
from engine.market.sim import SimSource, _put, _touch
from engine.market.watch import FeedWatch
from tests.market_support import MarketClock as Clock
from tests.market_support import market_over

T = int(datetime(2026, 3, 4, 12, 0, tzinfo=UTC).timestamp() * 1000) + 100  # 100 ms after a sim tick


@pytest.fixture
def clock() -> Clock:
    return Clock(T)


@pytest.fixture
def sim(clock: Clock) -> SimSource:
    return SimSource(0, clock=clock)


class Failing:
    """A source whose reads fail (a terminal gone), or whose symbol cannot be traded."""

    name = "flaky"

    def __init__(self, sim: SimSource, fail: bool = True, mode: TradeMode = TradeMode.FULL) -> None:
        self.sim, self.fail, self.mode = sim, fail, mode

    def now_ms(self) -> int:
        return self.sim.now_ms()

    def symbols(self) -> list[str]:
        return ["EURUSD"]

    def spec(self, symbol: str) -> MarketSpec:
        return replace(self.sim.spec(symbol), trade_mode=self.mode)

    def tick(self, symbol: str) -> Tick:
        if self.fail:
            raise FeedUnavailable("MT5 symbol_info_tick timed out after 200 ms (the call is still running)")
        return self.sim.tick(symbol)


def test_the_watch_says_which_symbol_went_stale_and_how_old_its_tick_is(sim: SimSource, clock: Clock) -> None:
    registry = CollectorRegistry()
    market = Market(sim, metrics=MarketMetrics(registry))
    watch = FeedWatch(market, ["EURUSD", "GBPUSD"], max_age_ms=5000)
    assert watch.state() == "ok"  # nothing delivered yet, and the watch is younger than 5 s
    clock.ms += 1000
    market.pump()
    assert watch.state() == "ok" and watch.age_ms("EURUSD") == 100
    assert registry.get_sample_value("haexec_market_tick_age_seconds", {"symbol": "EURUSD"}) == 0.1
    clock.ms += 12_200  # the feed stopped being pumped (a dead source): ages grow
    assert watch.state() == "stale: EURUSD tick 12.3 s old (and 1 more)"
    assert registry.get_sample_value("haexec_market_tick_age_seconds", {"symbol": "EURUSD"}) == 12.3
    market.pump()
    assert watch.state() == "ok"
    watch.close()
    assert registry.get_sample_value("haexec_market_tick_age_seconds", {"symbol": "EURUSD"}) is None


def test_the_watch_says_when_the_source_cannot_be_read(sim: SimSource, clock: Clock) -> None:
    class NoTicks(Failing):
        def ticks(self, *args: object) -> None:
            raise FeedUnavailable("MT5 copy_ticks_from(EURUSD) failed: -10004")

    market = market_over(NoTicks(sim, fail=False))
    watch = FeedWatch(market, ["EURUSD"], max_age_ms=5000)
    clock.ms += 1000
    market.pump()
    assert watch.state() == "unavailable: MT5 copy_ticks_from(EURUSD) failed: -10004"


def test_no_symbols_watched_is_said(sim: SimSource) -> None:
    assert FeedWatch(market_over(sim), [], 5000).state().startswith("ok (no symbols watched")


def test_the_sims_caches_take_a_key_another_thread_evicted() -> None:
    from collections import OrderedDict

    cache: OrderedDict[int, Any] = OrderedDict()
    _touch(cache, 1)  # evicted meanwhile: no KeyError
    for k in range(5):
        _put(cache, k, k, 3)
    assert list(cache) == [2, 3, 4]
