"""Bars from ticks, and coarser bars from finer ones.

A bar is the bid's open, high, low and close over [open, open + period), its tick volume
and its smallest spread. It is *closed* by whichever comes first: the first tick of a later
bar, or its end time passing on the clock (`advance`). A period without ticks has no bar,
as at MetaTrader 5: nothing is invented for a gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.market.base import BadInput, Bars, Timeframe


@dataclass(frozen=True)
class Row:
    """One bar while it is built (points)."""

    time_ms: int
    open: int
    high: int
    low: int
    close: int
    tick_volume: int
    spread: int


def to_bars(symbol: str, timeframe: Timeframe, digits: int, rows: Sequence[Row], *, forming: bool = False) -> Bars:
    if not rows:
        return Bars.empty(symbol, timeframe, digits)
    cols = np.array(
        [(r.time_ms, r.open, r.high, r.low, r.close, r.tick_volume, r.spread) for r in rows], dtype=np.int64
    ).T
    return Bars.of_columns(symbol, timeframe, digits, list(cols), forming=forming)


class BarBuilder:
    """Builds one symbol's bars of one timeframe from its ticks, in order."""

    def __init__(self, symbol: str, timeframe: Timeframe, digits: int) -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.digits = digits
        self._bar: Row | None = None
        self._last_ms: int | None = None

    @property
    def forming(self) -> Row | None:
        return self._bar

    def on_tick(self, time_ms: int, bid: int, spread: int = 0) -> list[Row]:
        """Add a tick; returns the bar it closed (the first tick of a later bar closes the
        forming one), if any. A tick older than the last one is refused: bars are built in
        time order or not at all."""
        if self._last_ms is not None and time_ms < self._last_ms:
            raise BadInput(
                f"{self.symbol} tick at {time_ms} ms is older than the previous one at {self._last_ms} ms "
                "(ticks must arrive in time order)"
            )
        self._last_ms = time_ms
        opened = self.timeframe.open_of(time_ms)
        closed: list[Row] = []
        bar = self._bar
        if bar is not None and opened != bar.time_ms:
            closed.append(bar)
            bar = None
        if bar is None:
            self._bar = Row(opened, bid, bid, bid, bid, 1, spread)
        else:
            self._bar = Row(
                bar.time_ms,
                bar.open,
                max(bar.high, bid),
                min(bar.low, bid),
                bid,
                bar.tick_volume + 1,
                min(bar.spread, spread),
            )
        return closed

    def advance(self, now_ms: int) -> list[Row]:
        """The clock says `now_ms`: the forming bar is closed once its end time has passed."""
        bar = self._bar
        if bar is not None and now_ms >= bar.time_ms + self.timeframe.ms:
            self._bar = None
            return [bar]
        return []


def aggregate(bars: Bars, timeframe: Timeframe) -> Bars:
    """Coarser bars from finer ones of the same symbol (e.g. M1 -> H1), oldest first. The
    result is forming when the input is (its last bar then holds the forming input bar)."""
    if timeframe.value % bars.timeframe.value:
        raise BadInput(f"{timeframe.name} bars cannot be built from {bars.timeframe.name} bars")
    if timeframe is bars.timeframe or len(bars) == 0:
        return Bars(
            bars.symbol,
            timeframe,
            bars.digits,
            bars.time_ms,
            bars.open,
            bars.high,
            bars.low,
            bars.close,
            bars.tick_volume,
            bars.spread,
            forming=bars.forming,
        )
    opens = bars.time_ms - bars.time_ms % timeframe.ms
    starts = np.flatnonzero(np.concatenate(([True], opens[1:] != opens[:-1])))
    ends = np.concatenate((starts[1:], [len(opens)])) - 1
    return Bars(
        bars.symbol,
        timeframe,
        bars.digits,
        opens[starts],
        bars.open[starts],
        np.maximum.reduceat(bars.high, starts),
        np.minimum.reduceat(bars.low, starts),
        bars.close[ends],
        np.add.reduceat(bars.tick_volume, starts),
        np.minimum.reduceat(bars.spread, starts),
        forming=bars.forming,
    )
