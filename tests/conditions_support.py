"""What the condition family tests share: hand-made bars, a fake Snapshot over them that
shows only what had closed by its `now_ms`, and the causality replay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from engine.market.base import Bars, FeedUnavailable, MarketDataError, Tick, Timeframe, UnknownSymbol
from engine.plans.conditions import confluence, momentum, orderflow, structure, volatility  # noqa: F401 (register)
from engine.plans.conditions.base import PARSERS, BookLevel, Condition, ConditionError, NewsEvent, Reading

T0 = int(datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp() * 1000)  # a Monday, 10:00 UTC
DIGITS = 2  # prices in the tests are points / 100: 10000 points is 100.00


def bars_of(
    rows: Sequence[tuple[int, int, int, int] | tuple[int, int, int, int, int]],
    *,
    symbol: str = "EURUSD",
    timeframe: Timeframe = Timeframe.M5,
    start_ms: int = T0,
) -> Bars:
    """Bars from (open, high, low, close[, tick_volume]) rows in points, one period apart."""
    n = len(rows)
    col = [np.array([r[i] for r in rows], dtype=np.int64) for i in range(4)]
    volume = np.array([r[4] if len(r) > 4 else 10 for r in rows], dtype=np.int64)
    times = np.array([start_ms + i * timeframe.ms for i in range(n)], dtype=np.int64)
    return Bars.of_columns(
        symbol, timeframe, DIGITS, [times, *col, volume, np.zeros(n, dtype=np.int64)], as_of_ms=start_ms
    )


def closes(values: Sequence[int], spread: int = 5) -> list[tuple[int, int, int, int]]:
    """Bars that open at the previous close and move to each value, with wicks of `spread`."""
    rows = []
    prev = values[0]
    for v in values:
        rows.append((prev, max(prev, v) + spread, min(prev, v) - spread, v))
        prev = v
    return rows


def close_of(bars: Bars, i: int) -> int:
    return int(bars.time_ms[i]) + bars.timeframe.ms


@dataclass
class FakeSnapshot:
    """A Snapshot at `now_ms` over whole bar series: `bars` serves the closed bars up to
    now (the newest `count`), never one closing later."""

    now_ms: int
    series: dict[tuple[str, Timeframe], Bars] = field(default_factory=dict)
    ticks: dict[str, Tick] = field(default_factory=dict)
    order_book: list[BookLevel] | None = None
    events: list[NewsEvent] = field(default_factory=list)
    news_down: bool = False
    down: bool = False

    def bars(self, symbol: str, timeframe: Timeframe, count: int) -> Bars:
        if self.down:
            raise FeedUnavailable("feed down")
        full = self.series.get((symbol, timeframe))
        if full is None:
            raise UnknownSymbol(f"no bars of {symbol} {timeframe.name}")
        n = int(np.searchsorted(full.time_ms + timeframe.ms, self.now_ms, side="right"))
        return full.slice(max(0, n - count), n, forming=False)

    def tick(self, symbol: str) -> Tick:
        if symbol not in self.ticks:
            raise UnknownSymbol(f"no tick of {symbol}")
        return self.ticks[symbol]

    def book(self, symbol: str) -> list[BookLevel] | None:
        if self.down:
            raise FeedUnavailable("feed down")
        return self.order_book

    def news(self, from_ms: int, to_ms: int) -> list[NewsEvent]:
        if self.news_down:
            raise MarketDataError("news source unreachable")
        return [e for e in self.events if from_ms <= e.at_ms <= to_ms]


def snapshot_at(bars: Bars | Sequence[Bars], i: int) -> FakeSnapshot:
    """The snapshot just after bar i of the first series closed."""
    series = [bars] if isinstance(bars, Bars) else list(bars)
    return FakeSnapshot(close_of(series[0], i), {(b.symbol, b.timeframe): b for b in series})


def parse(obj: Mapping[str, Any], path: str = "conditions") -> Condition:
    return PARSERS[str(obj["type"])](obj, path)


def refused(obj: Mapping[str, Any]) -> list[str]:
    with pytest.raises(ConditionError) as e:
        parse(obj)
    return e.value.errors


def replay(condition: Condition, full: Sequence[Bars]) -> list[Reading]:
    """Feed the first series' bars one at a time (every series cut at the same instant) and
    check each reading, and each pattern it confirms, against the reading on the full series
    restricted to that instant: a settled bar's reading never changes. Returns the readings."""
    readings = []
    for i in range(len(full[0])):
        now = close_of(full[0], i)
        prefix = FakeSnapshot(now, {})
        for b in full:
            n = int(np.searchsorted(b.time_ms + b.timeframe.ms, now, side="right"))
            prefix.series[(b.symbol, b.timeframe)] = b.slice(0, n, forming=False)
        seen = condition.evaluate(prefix)
        again = condition.evaluate(FakeSnapshot(now, {(b.symbol, b.timeframe): b for b in full}))
        assert seen == again, f"bar {i}: {seen} != {again}"
        for p in seen.patterns:
            assert p.confirmed_ms <= now, f"bar {i}: {p} confirmed after {now}"
        readings.append(seen)
    return readings
