"""The paper venue's quote from a Market: the market's spec and latest bid and ask, fresh
only; one line when it cannot quote (SymbolUnavailable: the signal is rejected, never
traded at a default), a BrokerError when the market cannot be read (the batch waits)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from engine.brokers.base import BrokerError, SymbolSpec, SymbolUnavailable
from engine.brokers.paper import PaperBroker
from engine.market import FeedUnavailable, Market, MarketSpec, Tick, TradeMode
from engine.market.sim import SimSource
from engine.model import OrderType, Side
from tests.market_support import MarketClock as Clock
from tests.market_support import market_over

T = int(datetime(2026, 3, 4, 12, 0, tzinfo=UTC).timestamp() * 1000) + 100  # 100 ms after a sim tick


@pytest.fixture
def clock() -> Clock:
    return Clock(T)


@pytest.fixture
def sim(clock: Clock) -> SimSource:
    return SimSource(0, clock=clock)


def paper(market: Market | None, max_age_ms: int = 5000) -> PaperBroker:
    return PaperBroker(None, "c", "me", market=market, max_quote_age_ms=max_age_ms)  # type: ignore[arg-type]


def test_without_a_market_the_paper_quote_has_no_prices() -> None:
    quote = paper(None).quote("ANYTHING")
    assert quote.spec == SymbolSpec(contract_size=Decimal(1)) and quote.bid is quote.ask is None
    assert quote.executable(Side.BUY, OrderType.MARKET, Decimal("1.1")) == Decimal("1.1")


def test_with_a_market_the_paper_quote_is_its_spec_and_latest_bid_and_ask(sim: SimSource) -> None:
    broker = paper(market_over(sim))
    tick = sim.tick("EURUSD")
    quote = broker.quote("EURUSD")
    assert (quote.bid, quote.ask) == (tick.bid, tick.ask) and quote.bid < quote.ask
    assert quote.spec == SymbolSpec.from_market(sim.spec("EURUSD"))
    assert quote.executable(Side.BUY, OrderType.MARKET, Decimal("9")) == tick.ask
    assert quote.executable(Side.SELL, OrderType.MARKET, Decimal("9")) == tick.bid
    assert quote.executable(Side.BUY, OrderType.LIMIT, Decimal("1.05")) == Decimal("1.05")


def test_an_unknown_symbol_or_a_stale_tick_is_no_quote_in_one_line(sim: SimSource, clock: Clock) -> None:
    with pytest.raises(SymbolUnavailable, match=r"^unknown symbol 'EURXYZ': the sim source has EURUSD, ") as unknown:
        paper(market_over(sim)).quote("EURXYZ")
    stale = paper(market_over(sim), max_age_ms=50)  # the tick in force is 100 ms old
    with pytest.raises(SymbolUnavailable) as old:
        stale.quote("EURUSD")
    assert str(old.value) == (
        "no fresh price for EURUSD: EURUSD tick at 2026-03-04T12:00:00.000Z is 0.100 s old,"
        " older than the 0.050 s accepted"
    )
    for e in (unknown, old):
        assert "\n" not in str(e.value)
    clock.ms -= 60  # 40 ms after the tick: fresh enough
    assert stale.quote("EURUSD").bid is not None


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


def test_a_market_that_cannot_be_read_is_a_broker_error_so_the_batch_waits(sim: SimSource) -> None:
    with pytest.raises(BrokerError, match=r"^paper broker: market data \(flaky\) unavailable: MT5 symbol_info_tick"):
        paper(market_over(Failing(sim))).quote("EURUSD")


def test_a_symbol_whose_trading_is_disabled_is_no_quote(sim: SimSource) -> None:
    with pytest.raises(SymbolUnavailable, match=r"^EURUSD: trading is disabled at the flaky source$"):
        paper(market_over(Failing(sim, fail=False, mode=TradeMode.DISABLED))).quote("EURUSD")
