"""Adaptive and momentum conditions: stand aside around high-impact news, and read a move
running out of strength (RSI divergence, momentum decay).

Parameters (default), and when each is TRUE:
- `news_filter` (a guard): `currencies` (a list, required, e.g. ["EUR", "USD"]),
  `before_min` (30, 0..1440), `after_min` (30, 0..1440), `impact` (["high"]; high, medium,
  low). FALSE from `before_min` minutes before to `after_min` minutes after an event of
  that impact for one of the currencies, TRUE otherwise; UNKNOWN when the news source
  cannot be read (so it fails closed). It has no bars, so no `max_age_ms`, and needs() is
  empty: it is evaluated with the plan's other conditions.
- `rsi_divergence`: symbol, timeframe, `direction` (bearish, bullish), `period` (14,
  2..100), `k` (2, 1..10: swing width), `within` (3 bars), `lookback` (100, 10..1000),
  `max_age_ms`. Bearish: the last two swing highs make a higher high in price while RSI
  makes a lower high; bullish: a lower low in price with a higher low in RSI; the second
  swing confirmed (k bars after it) within the last `within` bars. Confirmed divergences
  are returned as patterns `rsi_divergence_bearish` / `_bullish` (lag: k bars).
- `momentum_decay`: symbol, timeframe, `direction` (up, down), `period` (10, 1..200),
  `bars` (3, 1..50), `max_age_ms`. Momentum (close - close `period` bars before) is still
  positive (up) or negative (down) but has shrunk in size for `bars` closed bars running.

`max_age_ms` defaults to two periods of the timeframe. RSI is talipp's (Wilder's) on the
closes as floats, rounded back to Decimal; it reads a fixed window of the newest
`lookback` closed bars, so a reading depends on those bars alone.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from talipp.indicators import RSI

from engine.market.base import MarketDataError, Timeframe, price, utc
from engine.plans.conditions.base import Condition, Pattern, Reading, Snapshot, Truth, register
from engine.plans.conditions.fields import (
    INDICATOR_CACHE,
    MAX_LOOKBACK,
    Direction,
    Fields,
    OnBars,
    as_json,
    bar_age_ms,
    closed_bars,
    column_bytes,
    dec,
    default_max_age_ms,
    evaluating,
    one_line,
    parser,
    prices,
)
from engine.plans.conditions.structure import swings

MINUTE_MS = 60_000
IMPACTS = ("high", "medium", "low")


@dataclass(frozen=True)
class NewsFilter:
    type: ClassVar[str] = "news_filter"
    guard: ClassVar[bool] = True
    currencies: tuple[str, ...]
    before_min: int
    after_min: int
    impact: tuple[str, ...]

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return []

    def to_json(self) -> dict[str, object]:
        return as_json(self.type, self)

    def evaluate(self, snapshot: Snapshot) -> Reading:
        now = snapshot.now_ms
        try:
            events = snapshot.news(now - self.after_min * MINUTE_MS, now + self.before_min * MINUTE_MS)
        except MarketDataError as err:
            return Reading.unknown(f"news source: {one_line(err)}")
        which = "/".join(self.currencies)
        window = f"-{self.before_min} min to +{self.after_min} min"
        hits = sorted(
            (e for e in events if e.currency.upper() in self.currencies and e.impact.lower() in self.impact),
            key=lambda e: e.at_ms,
        )
        if hits:
            first = hits[0]
            return Reading(
                Truth.FALSE,
                f"{first.impact} impact {first.currency} news {first.title!r} "
                f"at {utc(first.at_ms):%Y-%m-%d %H:%M} UTC, inside {window} of it",
                value=first.title,
                threshold=window,
            )
        return Reading(Truth.TRUE, f"no {'/'.join(self.impact)} impact {which} news within {window}", threshold=window)


@register(NewsFilter.type)
@parser
def _news_filter(f: Fields) -> Condition:
    currencies = f.strings("currencies", None)
    if any(len(c) != 3 or not c.isalpha() for c in currencies):
        f.bad("currencies", "each a three-letter currency code (EUR, USD, ...)")
    impact = f.strings("impact", ("high",), upper=False)
    if any(i not in IMPACTS for i in impact):
        f.bad("impact", f"each one of {', '.join(IMPACTS)}")
    return NewsFilter(
        currencies,
        f.integer("before_min", 30, 0, 1440),
        f.integer("after_min", 30, 0, 1440),
        tuple(sorted(set(impact))),
    )


@functools.lru_cache(maxsize=INDICATOR_CACHE)
def rsi_series(close: bytes, digits: int, period: int) -> tuple[Decimal | None, ...]:
    """RSI at each bar (None before `period` closes), shared by every plan on these bars."""
    values = RSI(period, input_values=[float(c) for c in prices(close, digits)])
    return tuple(None if r is None else dec(r, 2) for r in values)


class Divergence(enum.Enum):
    BEARISH = "bearish"
    BULLISH = "bullish"


@dataclass(frozen=True)
class RsiDivergence(OnBars):
    type: ClassVar[str] = "rsi_divergence"
    guard: ClassVar[bool] = False
    symbol: str
    timeframe: Timeframe
    direction: Divergence
    period: int
    k: int
    within: int
    lookback: int
    max_age_ms: int

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        bars = closed_bars(snapshot, self.symbol, self.timeframe, self.lookback, self.max_age_ms)
        age = bar_age_ms(snapshot.now_ms, bars)
        bearish = self.direction is Divergence.BEARISH
        extremes = (bars.high if bearish else bars.low).tolist()
        rsi = rsi_series(*column_bytes(bars, "close"), bars.digits, self.period)
        points = [i for i in swings(extremes, self.k, high=bearish) if rsi[i] is not None]
        what = f"{self.symbol} {self.timeframe.name}"
        if len(points) < 2:
            return Reading(
                Truth.FALSE, f"{what}: fewer than two swing {'highs' if bearish else 'lows'} with an RSI", age_ms=age
            )
        a, b = points[-2], points[-1]
        ra, rb = rsi[a], rsi[b]
        assert ra is not None and rb is not None
        diverges = (extremes[b] > extremes[a] and rb < ra) if bearish else (extremes[b] < extremes[a] and rb > ra)
        last = len(bars) - 1
        confirmed = b + self.k
        pa, pb = price(extremes[a], bars.digits), price(extremes[b], bars.digits)
        shape = f"price {pa} -> {pb}, RSI({self.period}) {ra} -> {rb}"
        patterns: tuple[Pattern, ...] = ()
        if diverges and confirmed == last:
            kind = f"rsi_divergence_{self.direction.value}"
            params = {"period": self.period, "k": self.k, "first_ms": int(bars.time_ms[a]), "rsi": str(rb)}
            close_ms = int(bars.time_ms[last]) + self.timeframe.ms
            patterns = (Pattern(self.symbol, self.timeframe, kind, int(bars.time_ms[b]), close_ms, params),)
        holds = diverges and confirmed > last - self.within
        ago = f", confirmed {last - confirmed} bars ago" if diverges else ""
        return Reading(
            Truth.TRUE if holds else Truth.FALSE,
            f"{what}: {shape} ({self.direction.value} divergence {'yes' if diverges else 'no'}{ago}; "
            f"within {self.within} bars wanted)",
            value=shape,
            threshold=f"within {self.within} bars",
            age_ms=age,
            patterns=patterns,
        )


@register(RsiDivergence.type)
@parser
def _rsi_divergence(f: Fields) -> Condition:
    symbol, timeframe = f.symbol(), f.timeframe()
    direction = f.choice("direction", Divergence)
    period, k = f.integer("period", 14, 2, 100), f.integer("k", 2, 1, 10)
    within = f.integer("within", 3, 1, MAX_LOOKBACK)
    lookback = f.integer("lookback", 100, 10, MAX_LOOKBACK)
    if lookback < 2 * period + 2 * k:
        f.bad("lookback", f"must be at least 2 x period + 2 x k ({2 * period + 2 * k})")
    return RsiDivergence(
        symbol, timeframe, direction, period, k, within, lookback, f.max_age_ms(default_max_age_ms(timeframe))
    )


@dataclass(frozen=True)
class MomentumDecay(OnBars):
    type: ClassVar[str] = "momentum_decay"
    guard: ClassVar[bool] = False
    symbol: str
    timeframe: Timeframe
    direction: Direction
    period: int
    bars: int
    max_age_ms: int

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        bars = closed_bars(snapshot, self.symbol, self.timeframe, self.period + self.bars + 1, self.max_age_ms)
        close = bars.prices("close")
        momentum = [close[i] - close[i - self.period] for i in range(self.period, len(close))]
        up = self.direction is Direction.UP
        with_trend = all((m > 0) if up else (m < 0) for m in momentum)
        shrinking = all(abs(later) < abs(earlier) for earlier, later in zip(momentum, momentum[1:], strict=False))
        shown = " -> ".join(str(m) for m in momentum)
        return Reading(
            Truth.TRUE if with_trend and shrinking else Truth.FALSE,
            f"{self.symbol} {self.timeframe.name}: momentum({self.period}) {shown} "
            f"({'positive' if up else 'negative'} and shrinking for {self.bars} bars wanted)",
            value=shown,
            threshold=f"{self.bars} bars",
            age_ms=bar_age_ms(snapshot.now_ms, bars),
        )


@register(MomentumDecay.type)
@parser
def _momentum_decay(f: Fields) -> Condition:
    symbol, timeframe = f.symbol(), f.timeframe()
    return MomentumDecay(
        symbol,
        timeframe,
        f.choice("direction", Direction),
        f.integer("period", 10, 1, 200),
        f.integer("bars", 3, 1, 50),
        f.max_age_ms(default_max_age_ms(timeframe)),
    )
