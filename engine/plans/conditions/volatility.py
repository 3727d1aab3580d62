"""Volatility patterns on closed bars: compression (inside bars, a Bollinger squeeze, a low
ATR ratio) and the expansion that follows it (a fractal expansion, a high ATR ratio).

Parameters (default), and when each is TRUE:
- `inside_bars`: symbol, timeframe, `count` (2, 1..50), `max_age_ms`. The last `count`
  closed bars each lie inside the bar before them (high <= its high, low >= its low).
- `fractal_expansion`: symbol, timeframe, `bars` (5, 2..100), `ratio` ("1.5"), `direction`
  (any, up, down), `max_age_ms`. The newest closed bar's range is at least `ratio` x the
  mean range of the `bars` before it and, for up (down), it closes above (below) them all.
- `atr_ratio`: symbol, timeframe, `short` (5), `long` (20, 2..333), exactly one of `above` /
  `below`, `max_age_ms`. ATR(short) / ATR(long) is above (expansion) or below
  (compression) the number.
- `bollinger_squeeze`: symbol, timeframe, `period` (20), `std_dev` ("2"), `lookback`
  (100, 10..500: the widths a percentile ranks among), exactly one of `percentile_below` (0..100)
  / `width_below` (band width in % of the middle band), `max_age_ms`. The width is at or
  under that percentile of its last `lookback` values, or under that width.

`max_age_ms` defaults to two periods of the timeframe: an older newest closed bar is UNKNOWN.
ATR (Wilder) and Bollinger bands come from talipp: ATR on the Decimal prices themselves
(its arithmetic stays Decimal), the bands on floats (a square root), back to Decimal at the
boundary. Each reads a fixed window of the newest closed bars (ATR: 3 x `long`, so the
smoothing has settled), so a settled bar's reading never changes.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from talipp.indicators import ATR, BB
from talipp.ohlcv import OHLCV

from engine.market.base import Bars, Timeframe
from engine.plans.conditions.base import Condition, Reading, Snapshot, Truth, register
from engine.plans.conditions.fields import (
    INDICATOR_CACHE,
    MAX_LOOKBACK,
    Fields,
    OnBars,
    bar_age_ms,
    closed_bars,
    column_bytes,
    dec,
    default_max_age_ms,
    evaluating,
    parser,
    prices,
)


class Breakout(enum.Enum):
    ANY = "any"
    UP = "up"
    DOWN = "down"


def _verdict(holds: bool) -> Truth:
    return Truth.TRUE if holds else Truth.FALSE


@dataclass(frozen=True)
class InsideBars(OnBars):
    type: ClassVar[str] = "inside_bars"
    guard: ClassVar[bool] = False
    symbol: str
    timeframe: Timeframe
    count: int
    max_age_ms: int

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        bars = closed_bars(snapshot, self.symbol, self.timeframe, self.count + 1, self.max_age_ms)
        highs, lows = bars.high.tolist(), bars.low.tolist()
        run = 0
        for i in range(len(highs) - 1, 0, -1):
            if highs[i] > highs[i - 1] or lows[i] < lows[i - 1]:
                break
            run += 1
        return Reading(
            _verdict(run >= self.count),
            f"{self.symbol} {self.timeframe.name}: {run} consecutive inside bars, {self.count} wanted",
            value=str(run),
            threshold=str(self.count),
            age_ms=bar_age_ms(snapshot.now_ms, bars),
        )


@register(InsideBars.type)
@parser
def _inside_bars(f: Fields) -> Condition:
    symbol, timeframe = f.symbol(), f.timeframe()
    return InsideBars(symbol, timeframe, f.integer("count", 2, 1, 50), f.max_age_ms(default_max_age_ms(timeframe)))


@dataclass(frozen=True)
class FractalExpansion(OnBars):
    type: ClassVar[str] = "fractal_expansion"
    guard: ClassVar[bool] = False
    symbol: str
    timeframe: Timeframe
    bars: int
    ratio: Decimal
    direction: Breakout
    max_age_ms: int

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        bars = closed_bars(snapshot, self.symbol, self.timeframe, self.bars + 1, self.max_age_ms)
        highs, lows, closes = bars.high.tolist(), bars.low.tolist(), bars.close.tolist()
        newest = highs[-1] - lows[-1]
        before = sum(h - lo for h, lo in zip(highs[:-1], lows[:-1], strict=True))
        # compared as newest x bars >= ratio x sum: exact, and defined when the bars before had no range
        expands = Decimal(newest * self.bars) >= self.ratio * before and newest > 0
        measured = "inf" if before == 0 else str((Decimal(newest * self.bars) / before).quantize(Decimal("0.01")))
        broke = {
            Breakout.ANY: True,
            Breakout.UP: closes[-1] > max(highs[:-1]),
            Breakout.DOWN: closes[-1] < min(lows[:-1]),
        }[self.direction]
        where = (
            "" if self.direction is Breakout.ANY else f", breakout {self.direction.value} {'yes' if broke else 'no'}"
        )
        return Reading(
            _verdict(expands and broke),
            f"{self.symbol} {self.timeframe.name}: newest range {measured} x the mean of {self.bars} bars "
            f"(>= {self.ratio} wanted){where}",
            value=measured,
            threshold=str(self.ratio),
            age_ms=bar_age_ms(snapshot.now_ms, bars),
        )


@register(FractalExpansion.type)
@parser
def _fractal_expansion(f: Fields) -> Condition:
    symbol, timeframe = f.symbol(), f.timeframe()
    return FractalExpansion(
        symbol,
        timeframe,
        f.integer("bars", 5, 2, 100),
        f.decimal("ratio", Decimal("1.5"), low=Decimal("0.01"), high=Decimal(100)) or Decimal("1.5"),
        f.choice("direction", Breakout, Breakout.ANY),
        f.max_age_ms(default_max_age_ms(timeframe)),
    )


def atr(bars: Bars, period: int) -> Decimal:
    """Wilder's ATR of the newest bar, in price, on the Decimal prices (talipp's arithmetic
    is + - * / and max, so it stays exact Decimal)."""
    return _atr(*column_bytes(bars, "open", "high", "low", "close"), bars.digits, period)


@functools.lru_cache(maxsize=INDICATOR_CACHE)
def _atr(o: bytes, h: bytes, lo: bytes, c: bytes, digits: int, period: int) -> Decimal:
    rows = zip(*(prices(column, digits) for column in (o, h, lo, c)), strict=True)
    return Decimal(ATR(period, input_values=[OHLCV(*row) for row in rows])[-1])


@functools.lru_cache(maxsize=INDICATOR_CACHE)
def band_widths(close: bytes, digits: int, period: int, std_dev: Decimal) -> tuple[Decimal, ...]:
    """Each Bollinger band width in % of its middle band, from the period-th close on."""
    bands = BB(period, float(std_dev), input_values=[float(c) for c in prices(close, digits)])
    return tuple(dec(100 * (b.ub - b.lb) / b.cb) for b in bands[period - 1 :])


@dataclass(frozen=True)
class AtrRatio(OnBars):
    type: ClassVar[str] = "atr_ratio"
    guard: ClassVar[bool] = False
    symbol: str
    timeframe: Timeframe
    short: int
    long: int
    above: Decimal | None
    below: Decimal | None
    max_age_ms: int

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        bars = closed_bars(snapshot, self.symbol, self.timeframe, 3 * self.long, self.max_age_ms)
        age = bar_age_ms(snapshot.now_ms, bars)
        long_atr = atr(bars, self.long)
        if long_atr == 0:
            return Reading.unknown(f"{self.symbol} {self.timeframe.name}: ATR({self.long}) is 0 (no range)", age)
        ratio = (atr(bars, self.short) / long_atr).quantize(Decimal("0.0001"))
        if self.above is not None:
            holds, wanted = ratio > self.above, f"> {self.above}"
        else:
            assert self.below is not None
            holds, wanted = ratio < self.below, f"< {self.below}"
        return Reading(
            _verdict(holds),
            f"{self.symbol} {self.timeframe.name}: ATR({self.short}) / ATR({self.long}) {ratio} ({wanted} wanted)",
            value=str(ratio),
            threshold=wanted,
            age_ms=age,
        )


@register(AtrRatio.type)
@parser
def _atr_ratio(f: Fields) -> Condition:
    symbol, timeframe = f.symbol(), f.timeframe()
    short = f.integer("short", 5, 1, 500)
    long = f.integer("long", 20, 2, MAX_LOOKBACK // 3)
    if short >= long:
        f.bad("short", f"must be under long ({long})")
    f.exactly_one("above", "below")
    return AtrRatio(
        symbol,
        timeframe,
        short,
        long,
        f.decimal("above", low=Decimal(0), optional=True),
        f.decimal("below", low=Decimal(0), optional=True),
        f.max_age_ms(default_max_age_ms(timeframe)),
    )


@dataclass(frozen=True)
class BollingerSqueeze(OnBars):
    type: ClassVar[str] = "bollinger_squeeze"
    guard: ClassVar[bool] = False
    symbol: str
    timeframe: Timeframe
    period: int
    std_dev: Decimal
    lookback: int
    percentile_below: Decimal | None
    width_below: Decimal | None
    max_age_ms: int

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        widths_read = 1 if self.width_below is not None else self.lookback
        bars = closed_bars(snapshot, self.symbol, self.timeframe, self.period + widths_read - 1, self.max_age_ms)
        age = bar_age_ms(snapshot.now_ms, bars)
        widths = band_widths(*column_bytes(bars, "close"), bars.digits, self.period, self.std_dev)
        width = widths[-1]
        if self.width_below is not None:
            holds, value, wanted, where = width < self.width_below, width, f"< {self.width_below} %", ""
        else:
            assert self.percentile_below is not None
            rank = (Decimal(100 * sum(1 for w in widths if w <= width)) / len(widths)).quantize(Decimal("0.01"))
            holds, value, wanted = rank <= self.percentile_below, rank, f"percentile <= {self.percentile_below}"
            where = f", percentile {rank} of the last {self.lookback}"
        return Reading(
            _verdict(holds),
            f"{self.symbol} {self.timeframe.name}: band width {width} % of the middle band{where} ({wanted} wanted)",
            value=str(value),
            threshold=wanted,
            age_ms=age,
        )


@register(BollingerSqueeze.type)
@parser
def _bollinger_squeeze(f: Fields) -> Condition:
    symbol, timeframe = f.symbol(), f.timeframe()
    period = f.integer("period", 20, 2, 500)
    lookback = f.integer("lookback", 100, 10, MAX_LOOKBACK - 500)
    f.exactly_one("percentile_below", "width_below")
    return BollingerSqueeze(
        symbol,
        timeframe,
        period,
        f.decimal("std_dev", Decimal(2), low=Decimal("0.1"), high=Decimal(10)) or Decimal(2),
        lookback,
        f.decimal("percentile_below", low=Decimal(0), high=Decimal(100), optional=True),
        f.decimal("width_below", low=Decimal(0), optional=True),
        f.max_age_ms(default_max_age_ms(timeframe)),
    )
