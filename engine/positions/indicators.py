"""What the trailing rules read from bars: the ATR and the last confirmed swing. Closed
bars only, so a reading is settled once given and the forming bar never moves a stop.

The ATR is Wilder's (talipp's streaming ATR): its smoothing remembers every bar it was fed,
so two leaders agree on it only if they read the same bars; `atr_bars(period)` is the
count to read. A swing low at bar i is a low below the `bars` lows to its left and not
above the `bars` lows to its right (the first of equal lows counts); it is confirmed only
once those right-hand bars have closed, so feeding bars one at a time only ever adds swings.
"""

from __future__ import annotations

from decimal import Decimal

from talipp.indicators import ATR
from talipp.ohlcv import OHLCV

from engine.market.base import Bars, price
from engine.model import Side

# Wilder's smoothing weighs a bar k periods back by ((n-1)/n)^k: after 10 periods that is
# under 0.005 % for n = 14, so 10 x the period reads a settled value.
ATR_SETTLE_PERIODS = 10


def atr_bars(period: int) -> int:
    """How many bars to read for a settled ATR of `period` (one more for the forming bar)."""
    return period * ATR_SETTLE_PERIODS + 1


def atr(bars: Bars, period: int) -> Decimal | None:
    """The ATR of the closed bars, as a price; None while there are fewer than `period`."""
    closed = bars.closed()
    if len(closed) < period:
        return None
    # Points are integers, exact as floats; the library's float answer becomes a Decimal here.
    rows = zip(closed.open.tolist(), closed.high.tolist(), closed.low.tolist(), closed.close.tolist(), strict=True)
    indicator = ATR(period, input_values=[OHLCV(float(o), float(h), float(low), float(c)) for o, h, low, c in rows])
    value = indicator[-1]
    if value is None:
        return None
    return Decimal(repr(value)).scaleb(-closed.digits)


def swings(bars: Bars, width: int, side: Side) -> list[tuple[int, Decimal]]:
    """Every confirmed swing as (bar open time ms, price), oldest first: lows for a buy's
    stop, highs for a sell's."""
    closed, values = _extremes(bars, side)
    return [_swing_at(closed, i, side) for i in range(width, len(values) - width) if _is_swing(values, i, width)]


def last_swing(bars: Bars, width: int, side: Side) -> Decimal | None:
    """The most recent confirmed swing low (buy) or high (sell), or None. Searched from the
    newest bar back, so a recent swing costs a few comparisons, not the whole series."""
    closed, values = _extremes(bars, side)
    for i in range(len(values) - width - 1, width - 1, -1):
        if _is_swing(values, i, width):
            return _swing_at(closed, i, side)[1]
    return None


def _extremes(bars: Bars, side: Side) -> tuple[Bars, list[int]]:
    """The closed bars and their lows, or their highs negated, so one comparison serves both."""
    closed = bars.closed()
    return closed, closed.low.tolist() if side is Side.BUY else [-h for h in closed.high.tolist()]


def _is_swing(values: list[int], i: int, width: int) -> bool:
    v = values[i]
    return all(v < values[j] for j in range(i - width, i)) and all(v <= values[j] for j in range(i + 1, i + width + 1))


def _swing_at(closed: Bars, i: int, side: Side) -> tuple[int, Decimal]:
    points = int(closed.low[i]) if side is Side.BUY else int(closed.high[i])
    return int(closed.time_ms[i]), price(points, closed.digits)
