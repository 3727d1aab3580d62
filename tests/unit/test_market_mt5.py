"""The mt5 source against the fake `MetaTrader5` module: ticks, closed bars and the
forming bar from copy_rates_from_pos, ticks from copy_ticks_from, specs from symbol_info,
all through one worker thread with a deadline; the server clock's offset; errors."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from engine.market.base import FeedUnavailable, StaleData, Timeframe, TradeMode, UnknownSymbol
from engine.market.metrics import MarketMetrics
from engine.market.mt5 import MT5Source
from engine.market.service import Market
from engine.market.worker import CallTimedOut, WorkerBusy
from tests.fakes import MetaTrader5 as fake_mt5
from tests.fakes.MetaTrader5 import FakeTerminal
from tests.market_support import MarketClock as Clock

NOW = int(datetime(2026, 3, 4, 15, 30, 20, tzinfo=UTC).timestamp() * 1000)
OFFSET = 2 * 3_600_000  # the trade server runs at UTC+2
DEADLINE_MS = 200  # the hang test's deadline: it waits it out
ROOMY_MS = 5_000  # every other test's: a busy machine must not spend it before the call


@pytest.fixture
def fake() -> Iterator[FakeTerminal]:
    t = fake_mt5.reset()
    t.now = lambda: (NOW + OFFSET) / 1000
    minute = (NOW + OFFSET) // 60_000 * 60  # server seconds of the forming minute
    t.add_rates(
        "EURUSD",
        fake_mt5.TIMEFRAME_M1,
        [(minute - 60 * k, 1.1 + k / 1e5, 1.1001 + k / 1e5, 1.0999, 1.10005, 40 + k, 10, 0) for k in range(5, -1, -1)],
    )
    base = NOW + OFFSET - 3000
    t.add_ticks("EURUSD", [(base + 1000 * k, 1.10001 + k / 1e5, 1.10011 + k / 1e5) for k in range(3)])
    yield t
    t.release()


@pytest.fixture
def make_source(fake: FakeTerminal) -> Iterator[Callable[[int], MT5Source]]:
    made: list[MT5Source] = []

    def _make(deadline_ms: int) -> MT5Source:
        s = MT5Source(fake_mt5, deadline_ms=deadline_ms, server_offset_ms=OFFSET, clock=Clock(NOW))
        s.connect()
        made.append(s)
        return s

    yield _make
    fake.release()
    for s in made:
        s.close()


@pytest.fixture
def source(make_source: Callable[[int], MT5Source]) -> MT5Source:
    return make_source(ROOMY_MS)


def test_tick_on_the_utc_clock_with_its_age(source: MT5Source) -> None:
    tick = source.tick("EURUSD")
    assert (tick.bid, tick.ask, tick.last) == (Decimal("1.10003"), Decimal("1.10013"), None)
    assert tick.time_ms == NOW - 1000 and tick.age_ms == 1000


def test_closed_bars_drop_the_forming_one_which_comes_separately(source: MT5Source, fake: FakeTerminal) -> None:
    bars = source.closed_bars("EURUSD", Timeframe.M1, 3)
    minute = NOW // 60_000 * 60_000
    assert list(bars.time_ms) == [minute - 3 * 60_000, minute - 2 * 60_000, minute - 60_000]
    assert bars.prices("open") == (Decimal("1.10003"), Decimal("1.10002"), Decimal("1.10001"))
    assert list(bars.tick_volume) == [43, 42, 41] and not bars.forming and list(bars.spread) == [10, 10, 10]
    forming = source.forming_bar("EURUSD", Timeframe.M1)
    assert forming.forming and forming.time_ms[0] == minute and forming.prices("close") == (Decimal("1.10005"),)
    after = source.closed_bars("EURUSD", Timeframe.M1, 10, after_ms=minute - 2 * 60_000)
    assert list(after.time_ms) == [minute - 60_000]
    assert len(source.closed_bars("EURUSD", Timeframe.M1, 100)) == 5
    assert ("copy_rates_from_pos", "mt5-market") in fake.call_log


def test_ticks_since_through_copy_ticks_from(source: MT5Source) -> None:
    ticks = source.ticks("EURUSD", NOW - 2500, NOW, 100)
    assert list(ticks.time_ms) == [NOW - 2000, NOW - 1000]
    assert list(ticks.bid) == [110002, 110003] and list(ticks.last) == [-1, -1]


def test_spec_from_symbol_info(source: MT5Source) -> None:
    spec = source.spec("GER40")
    assert (spec.digits, spec.point, spec.contract_size, spec.tick_size) == (1, Decimal("0.1"), 1, Decimal("0.1"))
    assert (spec.tick_value, spec.volume_min, spec.volume_step, spec.volume_max) == (
        Decimal("0.108"),
        Decimal("0.1"),
        Decimal("0.1"),
        Decimal("50.0"),
    )
    assert spec.trade_mode is TradeMode.FULL and spec.stops_level == 0 and spec.currency_profit == "EUR"


def test_unknown_symbol_and_a_broken_link(source: MT5Source, fake: FakeTerminal) -> None:
    with pytest.raises(UnknownSymbol, match=r"^unknown symbol 'NOPE' at the MT5 terminal \(symbol_info: last_error -4"):
        source.tick("NOPE")
    fake.fail_next("copy_rates_from_pos", -10002, "IPC recv failed")
    with pytest.raises(FeedUnavailable, match=r"copy_rates_from_pos\(EURUSD\) failed: last_error -10002 IPC recv"):
        source.closed_bars("EURUSD", Timeframe.M1, 3)


def test_a_hung_call_times_out_and_the_next_is_refused_at_once(
    make_source: Callable[[int], MT5Source], fake: FakeTerminal
) -> None:
    source = make_source(DEADLINE_MS)
    source.tick("EURUSD")  # digits known: the next tick is one call
    fake.hang("symbol_info_tick")
    with pytest.raises(CallTimedOut, match=r"MT5 symbol_info_tick timed out after 200 ms"):
        source.tick("EURUSD")
    assert fake.entered.is_set()
    with pytest.raises(WorkerBusy, match="terminal busy: MT5 symbol_info_tick has not returned"):
        source.tick("EURUSD")
    fake.release()
    assert fake.returned.wait(2.0)
    assert source.tick("EURUSD").bid == Decimal("1.10003")


def test_reads_can_share_the_brokers_worker(fake: FakeTerminal) -> None:
    """A runner of the broker's kind (here a stand-in that records its thread) carries every call."""
    threads: list[str] = []

    def run(what: str, job: object, timeout_s: float) -> object:
        threads.append(threading.current_thread().name)
        if what == "MT5 symbol_info_tick":
            raise RuntimeError("MT5 terminal busy: order_send has not returned")  # the broker's BrokerError
        return job(fake_mt5)  # type: ignore[operator]

    fake_mt5.initialize()
    shared = MT5Source(run=run, server_offset_ms=OFFSET, clock=Clock(NOW))
    assert shared.closed_bars("EURUSD", Timeframe.M1, 2).closed_count == 2 and threads
    with pytest.raises(FeedUnavailable, match="MT5 symbol_info_tick: MT5 terminal busy: order_send has not returned"):
        shared.tick("EURUSD")


def test_through_the_market_facade(source: MT5Source, fake: FakeTerminal) -> None:
    registry = CollectorRegistry()
    market = Market(source, metrics=MarketMetrics(registry))
    bars = market.bars("EURUSD", "M1", 3, max_age_ms=5000)
    assert bars.forming and bars.closed_count == 3 and bars.age_ms == 1000
    with pytest.raises(StaleData, match="EURUSD M1 bars is 1.000 s old"):
        market.bars("EURUSD", "M1", 3, max_age_ms=500)
    assert registry.get_sample_value("haexec_market_data_up", {"source": "mt5"}) == 1


def test_the_fake_answers_like_the_real_package() -> None:
    t = fake_mt5.reset()
    assert fake_mt5.copy_rates_from_pos("EURUSD", fake_mt5.TIMEFRAME_M1, 0, 5) is None  # not initialized
    assert fake_mt5.last_error() == (-10004, "No IPC connection")
    fake_mt5.initialize()
    empty = fake_mt5.copy_rates_from_pos("EURUSD", fake_mt5.TIMEFRAME_H1, 0, 5)
    assert isinstance(empty, np.ndarray) and empty.dtype.names == fake_mt5.RATES_DTYPE.names and len(empty) == 0
    assert fake_mt5.copy_rates_from_pos("EURUSD", 7, 0, 5) is None and fake_mt5.last_error()[0] == -2
    t.add_ticks("EURUSD", [(1_000_000, 1.1, 1.2), (1_001_000, 1.1, 1.2, 1.15, 3, fake_mt5.TICK_FLAG_LAST)])
    trades = fake_mt5.copy_ticks_from("EURUSD", 0, 10, fake_mt5.COPY_TICKS_TRADE)
    assert list(trades["time_msc"]) == [1_001_000] and trades.dtype == fake_mt5.TICKS_DTYPE
    assert fake_mt5.market_book_get("EURUSD") is None
    t.set_book("EURUSD", [(fake_mt5.BOOK_TYPE_SELL, 1.1002, 5), (fake_mt5.BOOK_TYPE_BUY, 1.1, 3)])
    assert fake_mt5.market_book_add("EURUSD")
    book = fake_mt5.market_book_get("EURUSD")
    assert [(b.type, b.price, b.volume) for b in book] == [(1, 1.1002, 5), (2, 1.1, 3)]
    assert fake_mt5.market_book_release("EURUSD") and fake_mt5.market_book_get("EURUSD") is None
