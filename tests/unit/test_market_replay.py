"""The replay source: files checked whole before anything is played (one line naming the
file, the line and what is wrong), playback at real time, N times and max, bars from ticks
and from bar files, resume from a saved cursor, a finished file reported stale."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engine.market.base import BadInput, BadRequest, StaleData, Tick, Timeframe, UnknownSymbol
from engine.market.metrics import MarketMetrics
from engine.market.replay import Cursor, ReplaySource, load
from engine.market.service import Market
from tests.market_support import MarketClock as Clock

T = int(datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp() * 1000)

TICKS = """time,symbol,bid,ask
2026-01-05T10:00:00Z,EURUSD,1.10000,1.10010
2026-01-05T10:00:00.500Z,XAUUSD,2400.10,2400.40
2026-01-05T10:00:15Z,EURUSD,1.10020,1.10032
2026-01-05T10:00:30Z,EURUSD,1.09990,1.09999
2026-01-05T10:00:59.999Z,EURUSD,1.10005,1.10015
2026-01-05T10:01:00Z,EURUSD,1.10010,1.10020
2026-01-05T10:01:01Z,EURUSD,1.1003,1.1004
2026-01-05T10:03:20Z,EURUSD,1.10000,1.10010
"""


class MemoryStore:
    def __init__(self) -> None:
        self.rows: dict[str, Cursor] = {}
        self.saves = 0

    def load(self, feed: str) -> Cursor | None:
        return self.rows.get(feed)

    def save(self, feed: str, path: str, cursor: Cursor) -> None:
        self.saves += 1
        old = self.rows.get(feed)
        self.rows[feed] = (
            cursor if old is None else Cursor(max(old.position, cursor.position), max(old.data_ms, cursor.data_ms))
        )


def write(tmp_path: Path, text: str, name: str = "feed.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_real_time_playback_shows_a_tick_at_its_time(tmp_path: Path) -> None:
    clock = Clock(1_000_000)
    src = ReplaySource(load(write(tmp_path, TICKS)), speed=1.0, clock=clock)
    assert src.symbols() == ["EURUSD", "XAUUSD"] and src.now_ms() == T
    tick = src.tick("EURUSD")
    assert (tick.bid, tick.ask, tick.time_ms, tick.age_ms) == (Decimal("1.10000"), Decimal("1.10010"), T, 0)
    clock.ms += 14_999
    assert src.tick("EURUSD").age_ms == 14_999 and src.tick("EURUSD").bid == Decimal("1.10000")
    clock.ms += 1
    assert src.tick("EURUSD").bid == Decimal("1.10020")
    assert src.tick("XAUUSD").bid == Decimal("2400.10") and src.spec("EURUSD").digits == 5


def test_bars_from_ticks_close_when_their_end_passes(tmp_path: Path) -> None:
    clock = Clock(1_000_000)
    src = ReplaySource(load(write(tmp_path, TICKS)), speed=1.0, clock=clock)
    clock.ms += 59_999  # 10:00:59.999: the 10:00 bar is forming
    assert len(src.closed_bars("EURUSD", Timeframe.M1, 10)) == 0
    forming = src.forming_bar("EURUSD", Timeframe.M1)
    assert (forming.open[0], forming.high[0], forming.low[0], forming.close[0], forming.tick_volume[0]) == (
        110000,
        110020,
        109990,
        110005,
        4,
    )
    clock.ms += 1  # 10:01:00.000
    m1 = src.closed_bars("EURUSD", Timeframe.M1, 10)
    assert [
        (int(b), int(o), int(h), int(lo), int(c))
        for b, o, h, lo, c in zip(m1.time_ms, m1.open, m1.high, m1.low, m1.close, strict=True)
    ] == [(T, 110000, 110020, 109990, 110005)]
    clock.ms = 1_000_000 + 240_000  # 10:04: 10:01 and 10:03 closed, no 10:02 (no tick)
    m1 = src.closed_bars("EURUSD", Timeframe.M1, 10)
    assert list(m1.time_ms) == [T, T + 60_000, T + 180_000] and m1.close[1] == 110030 and m1.spread[1] == 10
    assert len(src.closed_bars("EURUSD", Timeframe.M5, 10)) == 0
    assert src.forming_bar("EURUSD", Timeframe.M5).high[0] == 110030
    clock.ms = 1_000_000 + 300_000
    m5 = src.closed_bars("EURUSD", Timeframe.M5, 10)
    assert (m5.open[0], m5.high[0], m5.low[0], m5.close[0], m5.tick_volume[0]) == (110000, 110030, 109990, 110000, 7)


def test_n_times_faster(tmp_path: Path) -> None:
    clock = Clock(1_000_000)
    src = ReplaySource(load(write(tmp_path, TICKS)), speed=60.0, clock=clock)
    clock.ms += 1000  # a minute of data per second
    assert src.now_ms() == T + 60_000 and src.tick("EURUSD").bid == Decimal("1.10010")


def test_max_speed_releases_as_it_is_pumped_and_a_finished_feed_goes_stale(tmp_path: Path) -> None:
    clock = Clock(1_000_000)
    src = ReplaySource(load(write(tmp_path, TICKS)), speed=None, clock=clock, batch=3)
    market = Market(src, metrics=MarketMetrics(CollectorRegistry()))
    got: list[Tick] = []
    market.subscribe(["EURUSD"], on_tick=got.append)
    market.pump()
    assert [t.bid for t in got] == [Decimal("1.10000"), Decimal("1.10020")]  # 3 events, one of them gold
    while not src.finished:
        market.pump()
    assert [str(t.bid) for t in got] == ["1.10000", "1.10020", "1.09990", "1.10005", "1.10010", "1.10030", "1.10000"]
    assert market.tick("EURUSD", max_age_ms=1000).time_ms == T + 200_000
    clock.ms += 5_000  # the file is over: the clock runs on, the last tick ages
    with pytest.raises(StaleData, match=r"EURUSD tick at 2026-01-05T10:03:20\.000Z is 5\.000 s old"):
        market.tick("EURUSD", max_age_ms=1000)
    with pytest.raises(StaleData, match="EURUSD M1 bars is 5.000 s old"):
        market.bars("EURUSD", "M1", 5, max_age_ms=1000)


def test_resume_where_it_stopped(tmp_path: Path) -> None:
    path = write(tmp_path, TICKS)
    store = MemoryStore()
    clock = Clock(1_000_000)
    first = ReplaySource(load(path), speed=1.0, clock=clock, store=store)
    clock.ms += 61_000  # 10:01:01 of the file
    first.close()  # the process stops
    assert store.rows and next(iter(store.rows.values())) == Cursor(7, T + 61_000)
    clock.ms += 3_600_000  # an hour later it restarts
    again = ReplaySource(load(path), speed=1.0, clock=clock, store=store)
    assert again.now_ms() == T + 61_000 and again.tick("EURUSD").bid == Decimal("1.1003")
    edited = write(tmp_path, TICKS + "2026-01-05T10:05:00Z,EURUSD,1.1,1.1001\n", "edited.csv")
    assert ReplaySource(load(edited), speed=1.0, clock=clock, store=store).now_ms() == T  # another file: from its start


def test_resume_at_max_speed(tmp_path: Path) -> None:
    path = write(tmp_path, TICKS)
    store = MemoryStore()
    clock = Clock(1_000_000)
    first = ReplaySource(load(path), speed=None, clock=clock, store=store, batch=4)
    first.advance()
    first.close()
    again = ReplaySource(load(path), speed=None, clock=clock, store=store, batch=4)
    assert again.position == 4 and again.tick("EURUSD").bid == Decimal("1.09990")


def test_a_bar_file_shows_a_bar_only_once_it_is_over(tmp_path: Path) -> None:
    text = """time,symbol,open,high,low,close,volume,spread
2026-01-05T10:00:00Z,GER40,18000.0,18010.5,17990.0,18005.0,120,10
2026-01-05T10:01:00Z,GER40,18005.0,18007.0,18001.0,18002.5,80,12
2026-01-05T10:02:00Z,GER40,18002.5,18020.0,18002.0,18019.0,90,10
"""
    clock = Clock(1_000_000)
    src = ReplaySource(load(write(tmp_path, text)), speed=1.0, clock=clock)
    assert src.now_ms() == T + 60_000  # the first bar's close
    bars = src.closed_bars("GER40", Timeframe.M1, 10)
    assert len(bars) == 1 and bars.prices("high") == (Decimal("18010.5"),) and bars.tick_volume[0] == 120
    tick = src.tick("GER40")
    assert (tick.bid, tick.ask, tick.time_ms) == (Decimal("18005.0"), Decimal("18006.0"), T + 60_000)
    assert len(src.forming_bar("GER40", Timeframe.M1)) == 0
    clock.ms += 120_000
    assert src.forming_bar("GER40", Timeframe.M5).high[0] == 180200
    with pytest.raises(UnknownSymbol, match="replay has no spec for GER40"):
        src.spec("GER40")


def test_a_finer_timeframe_than_the_file_is_refused(tmp_path: Path) -> None:
    text = "time,symbol,open,high,low,close,timeframe\n2026-01-05T10:00:00Z,EURUSD,1.1,1.2,1.0,1.1,H1\n"
    src = ReplaySource(load(write(tmp_path, text)), clock=Clock(1_000_000))
    with pytest.raises(BadRequest, match="replay file has H1 bars for EURUSD: M15 bars cannot be built from them"):
        src.closed_bars("EURUSD", Timeframe.M15, 5)


BAD = [
    (
        "time,symbol,bid,ask\n2026-01-05T10:00:01Z,EURUSD,1.1,1.2\n2026-01-05T10:00:00Z,EURUSD,1.1,1.2\n",
        "line 3: time 2026-01-05T10:00:00.000Z is before line 2's 2026-01-05T10:00:01.000Z "
        "(rows must be sorted by time)",
    ),
    (
        "time,symbol,bid,ask\n2026-01-05T10:00:00Z,EURUSD,1.1,1.2\n2026-01-05T10:00:00Z,EURUSD,1.1,1.2\n",
        "line 3: duplicates an earlier row (EURUSD at 2026-01-05T10:00:00.000Z)",
    ),
    (
        "time,symbol,open,high,low,close\n2026-01-05T10:00:00Z,X,1,2,1,1\n2026-01-05T10:00:00Z,X,1,3,1,1\n",
        "line 3: duplicates an earlier row (X bar at 2026-01-05T10:00:00.000Z)",
    ),
    ("time,symbol,bid,ask\n2026-01-05T10:00:00Z,EURUSD,abc,1.2\n", "line 2: bid 'abc' is not a number"),
    ("time,symbol,bid,ask\n2026-01-05T10:00:00Z,EURUSD,NaN,1.2\n", "line 2: bid 'NaN' is not a positive price"),
    ("time,symbol,bid,ask\n2026-01-05T10:00:00Z,EURUSD,-1,1.2\n", "line 2: bid '-1' is not a positive price"),
    ("time,symbol,bid,ask\nyesterday,EURUSD,1.1,1.2\n", "line 2: time 'yesterday' is not an ISO 8601 time"),
    ("time,symbol,bid,ask\n2026-01-05T10:00:00Z,EURUSD,1.3,1.2\n", "line 2: EURUSD bid 1.3 is above its ask 1.2"),
    ("time,symbol,bid,ask\n2026-01-05T10:00:00Z,EURUSD,1.1\n", "line 2: 3 fields, the header has 4"),
    (
        "time,symbol,open,high,low,close\n2026-01-05T10:00:00Z,X,1,0.9,1,1\n",
        "line 2: X bar is not low <= open, close <= high",
    ),
    (
        "time,symbol,open,high,low,close\n2026-01-05T10:00:30Z,X,1,1,1,1\n",
        "line 2: X M1 bar at 2026-01-05T10:00:30.000Z is not a M1 open",
    ),
    ("time,symbol,price\n", "the header must have bid,ask (ticks) or open,high,low,close (bars), not neither"),
    ("time,symbol,bid,ask\n", "no rows after the header"),
    ("", "empty (it needs a header row and at least one row)"),
    ("symbol,bid,ask\nX,1,2\n", "the header has no 'time' column"),
    (
        "time,symbol,open,high,low,close,timeframe\n2026-01-05T10:00:00Z,X,1,1,1,1,M2\n",
        "X: timeframe 'M2' does not exist",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_files_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(BadInput) as e:
        load(path)
    assert str(e.value).startswith(f"replay file {path}") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_symbols(tmp_path: Path) -> None:
    data = load(write(tmp_path, TICKS))
    with pytest.raises(UnknownSymbol, match=r"has no GBPUSD \(it has EURUSD, XAUUSD\)"):
        ReplaySource(data, clock=Clock(1_000_000), symbols=("EURUSD", "GBPUSD"))
    with pytest.raises(UnknownSymbol, match="unknown symbol 'XAUUSD': the replay has EURUSD"):
        ReplaySource(data, clock=Clock(1_000_000), symbols=("EURUSD",)).tick("XAUUSD")
