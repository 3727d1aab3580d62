"""The feed on Redis Streams (fakeredis): ids are market time, a tick published twice is
added once, fields are decimal text read back digit for digit, streams stay bounded."""

from __future__ import annotations

from decimal import Decimal

import fakeredis

from engine.market.base import Tick, Timeframe
from engine.venue.streams import (
    BarClose,
    Publisher,
    bars_after,
    bars_key,
    latest_tick,
    ticks_after,
    ticks_key,
)

D = Decimal


def tick(t: int, bid: str, ask: str, symbol: str = "EURUSD", last: str | None = None) -> Tick:
    return Tick(symbol, t, D(bid), D(ask), D(last) if last else None, 0)


def test_ticks_round_trip_with_market_time_ids_and_a_restart_adds_nothing_twice() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    pub = Publisher(r, "c1", maxlen=1000)
    sent = [
        tick(1000, "1.08500", "1.08510"),
        tick(1250, "1.08501", "1.08512"),
        tick(1250, "5200.1", "5200.6", "US500", "5200.3"),
    ]
    assert pub.publish(sent).added == 3
    assert [i for i, _ in r.xrange(ticks_key("c1", "EURUSD"))] == ["1000-0", "1250-0"]
    # a restarted venue publishing from its cursor again: refused by id, counted, nothing added
    again = pub.publish([tick(1250, "1.08501", "1.08512"), tick(1500, "1.08490", "1.08499")])
    assert (again.added, again.duplicates) == (1, 1)
    assert r.xlen(ticks_key("c1", "EURUSD")) == 3
    read = ticks_after(r, "c1", "EURUSD", 1000, now_ms=1600)
    assert [(t.time_ms, t.bid, t.ask, t.age_ms) for t in read] == [
        (1250, D("1.08501"), D("1.08512"), 350),
        (1500, D("1.08490"), D("1.08499"), 100),
    ]
    assert str(read[0].bid) == "1.08501"  # digit for digit, trailing zeros kept
    us = latest_tick(r, "c1", "US500", now_ms=1250)
    assert us is not None and us.last == D("5200.3") and us.age_ms == 0
    assert latest_tick(r, "c1", "GBPUSD", now_ms=0) is None
    assert latest_tick(r, "c2", "EURUSD", now_ms=0) is None  # clusters never share a stream


def test_streams_are_bounded() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    pub = Publisher(r, "c", maxlen=100)
    for k in range(10):
        pub.publish([tick(1000 + 250 * (100 * k + i), "1.1", "1.2") for i in range(100)])
    # MAXLEN ~ trims in whole nodes: about the bound, never the 1,000 sent
    assert 100 <= r.xlen(ticks_key("c", "EURUSD")) < 300


def test_bar_closes_in_close_time_order_across_timeframes() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    pub = Publisher(r, "c", maxlen=1000)
    m1 = BarClose("EURUSD", Timeframe.M1, 240_000, D("1.1"), D("1.2"), D("1.0"), D("1.15"), 240, 8)
    m5 = BarClose("EURUSD", Timeframe.M5, 0, D("1.05"), D("1.2"), D("1.0"), D("1.15"), 1200, 7)
    earlier = BarClose("EURUSD", Timeframe.M1, 180_000, D("1.0"), D("1.1"), D("0.9"), D("1.05"), 240, 9)
    assert pub.publish([], [m5, m1, earlier]).added == 3
    ids = [i for i, _ in r.xrange(bars_key("c", "EURUSD"))]
    assert ids == ["240000-0", "300000-0", "300000-1"]  # M1 before M5 at the same close
    assert bars_after(r, "c", "EURUSD", 240_000) == [m1, m5]
    assert bars_after(r, "c", "EURUSD", 300_000) == []
