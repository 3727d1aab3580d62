"""The correlation family: what another symbol does.

- `change_pct`: `symbol`, `window` (`1m`..`7d`, a whole number of bars), `timeframe` (M1
  default), exactly one of `below` / `above` (percent), `max_age_ms` (60000). The change of
  the last closed bar's close against the close `window` before it; TRUE when it is at most
  `below` (`-0.3`: fell 0.3 % or more) / at least `above`.
- `correlation`: `symbol`, `other`, `timeframe`, `bars` (3..1000), exactly one of `below` /
  `above` (-1..1), `max_age_ms` (60000). The Pearson correlation of the two symbols'
  close-to-close returns over their last `bars` common closed bars; TRUE when it is at most
  `below` / at least `above`.

Both read closed bars only. The change is exact (Decimal); the correlation coefficient is a
statistic, computed in floating point (numpy) and shown to 4 decimals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, ClassVar

import numpy as np

from engine.market.base import Bars, MarketDataError, Timeframe
from engine.plans.conditions.base import Reading, Snapshot, Truth, register
from engine.plans.conditions.params import Params, canon

MAX_AGE_MS = 60_000
MIN_WINDOW_MS = 60_000
MAX_WINDOW_MS = 7 * 86_400_000
MAX_WINDOW_BARS = 10_000
FOUR_PLACES = Decimal("0.0001")


def _compare(kind: str, value: Decimal, threshold: Decimal) -> bool:
    return value <= threshold if kind == "below" else value >= threshold


def _relation(kind: str, holds: bool) -> str:
    sign = "<=" if kind == "below" else ">="
    return sign if holds else f"not {sign}"


def _read(snapshot: Snapshot, symbol: str, tf: Timeframe, count: int, max_age_ms: int) -> Bars | Reading:
    try:
        bars = snapshot.bars(symbol, tf, count)
    except MarketDataError as exc:
        return Reading.unknown(f"{symbol} {tf.name}: {exc}")
    if bars.age_ms > max_age_ms:
        return Reading.unknown(
            f"{symbol} {tf.name} bars {bars.age_ms} ms old, older than {max_age_ms} ms", age_ms=bars.age_ms
        )
    return bars.closed()


@dataclass(frozen=True)
class ChangePct:
    symbol: str
    timeframe: Timeframe
    window_ms: int
    kind: str  # below / above
    threshold: Decimal
    max_age_ms: int
    type: ClassVar[str] = "change_pct"
    guard: ClassVar[bool] = False

    @property
    def window_bars(self) -> int:
        return self.window_ms // self.timeframe.ms

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [(self.symbol, self.timeframe)]

    @property
    def lookback(self) -> int:
        return self.window_bars + 1

    def evaluate(self, snapshot: Snapshot) -> Reading:
        bars = _read(snapshot, self.symbol, self.timeframe, self.window_bars + 1, self.max_age_ms)
        if isinstance(bars, Reading):
            return bars
        window = _window_name(self.window_ms)
        if not len(bars):
            return Reading.unknown(f"{self.symbol} {self.timeframe.name}: no closed bars", age_ms=bars.age_ms)
        # The reference is the bar closed `window` before the last one; with a gap in the
        # data (a replay's weekend) the latest bar at or before that time.
        last_open = int(bars.time_ms[-1])
        at = int(np.searchsorted(bars.time_ms, last_open - self.window_ms, side="right")) - 1
        if at < 0:
            return Reading.unknown(
                f"{self.symbol} {self.timeframe.name}: less than {window} of closed bars", age_ms=bars.age_ms
            )
        closes = bars.prices("close")
        start, end = closes[at], closes[-1]
        change = ((end - start) / start * 100).quantize(FOUR_PLACES, rounding=ROUND_HALF_EVEN)
        holds = _compare(self.kind, change, self.threshold)
        return Reading(
            Truth.TRUE if holds else Truth.FALSE,
            f"{self.symbol} {window} change {canon(change)} % {_relation(self.kind, holds)}"
            f" {canon(self.threshold)} % ({canon(start)} -> {canon(end)})",
            value=canon(change),
            threshold=canon(self.threshold),
            age_ms=bars.age_ms,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "symbol": self.symbol,
            "timeframe": self.timeframe.name,
            "window": _window_name(self.window_ms),
            self.kind: canon(self.threshold),
            "max_age_ms": self.max_age_ms,
        }


def _window_name(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms // 1000}s"


@register("change_pct")
def _parse_change(obj: Mapping[str, Any], path: str) -> ChangePct:
    p = Params(obj, path, ("symbol", "timeframe", "window", "below", "above"))
    symbol = p.symbol()
    tf = p.timeframe(default=Timeframe.M1)
    window = p.duration_ms("window", MIN_WINDOW_MS, MAX_WINDOW_MS)
    if window % tf.ms or window // tf.ms > MAX_WINDOW_BARS:
        p.bad("window", f"must be a whole number of {tf.name} bars, at most {MAX_WINDOW_BARS}")
    kind, threshold = p.one_of(("below", "above"))
    cond = ChangePct(symbol, tf, window, kind, threshold or Decimal(0), p.max_age_ms(MAX_AGE_MS))
    p.done()
    return cond


@dataclass(frozen=True)
class Correlation:
    symbol: str
    other: str
    timeframe: Timeframe
    bars: int
    kind: str
    threshold: Decimal
    max_age_ms: int
    type: ClassVar[str] = "correlation"
    guard: ClassVar[bool] = False

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [(self.symbol, self.timeframe), (self.other, self.timeframe)]

    @property
    def lookback(self) -> int:
        return self.bars + 1

    def evaluate(self, snapshot: Snapshot) -> Reading:
        # One bar more than the returns: n returns need n + 1 closes.
        mine = _read(snapshot, self.symbol, self.timeframe, self.bars + 1, self.max_age_ms)
        if isinstance(mine, Reading):
            return mine
        theirs = _read(snapshot, self.other, self.timeframe, self.bars + 1, self.max_age_ms)
        if isinstance(theirs, Reading):
            return theirs
        age = max(mine.age_ms, theirs.age_ms)
        common, ia, ib = np.intersect1d(mine.time_ms, theirs.time_ms, assume_unique=True, return_indices=True)
        if len(common) < self.bars + 1:
            return Reading.unknown(
                f"{self.symbol}/{self.other} {self.timeframe.name}: {len(common)} common closed bars, "
                f"{self.bars + 1} needed",
                age_ms=age,
            )
        a = np.diff(mine.close[ia][-(self.bars + 1) :].astype(np.float64))
        b = np.diff(theirs.close[ib][-(self.bars + 1) :].astype(np.float64))
        if not a.std() or not b.std():
            return Reading.unknown(f"{self.symbol}/{self.other}: a flat series has no correlation", age_ms=age)
        rho = Decimal(repr(float(np.corrcoef(a, b)[0, 1]))).quantize(FOUR_PLACES, rounding=ROUND_HALF_EVEN)
        holds = _compare(self.kind, rho, self.threshold)
        return Reading(
            Truth.TRUE if holds else Truth.FALSE,
            f"{self.symbol}/{self.other} {self.timeframe.name} correlation over {self.bars} bars {canon(rho)} "
            f"{_relation(self.kind, holds)} {canon(self.threshold)}",
            value=canon(rho),
            threshold=canon(self.threshold),
            age_ms=age,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "symbol": self.symbol,
            "other": self.other,
            "timeframe": self.timeframe.name,
            "bars": self.bars,
            self.kind: canon(self.threshold),
            "max_age_ms": self.max_age_ms,
        }


@register("correlation")
def _parse_correlation(obj: Mapping[str, Any], path: str) -> Correlation:
    p = Params(obj, path, ("symbol", "other", "timeframe", "bars", "below", "above"))
    symbol, other, tf = p.symbol(), p.symbol("other"), p.timeframe()
    if symbol and symbol == other:
        p.bad("other", "must be another symbol than symbol")
    bars = p.integer("bars", 3, 1000)
    kind, threshold = p.one_of(("below", "above"))
    if threshold is not None and not -1 <= threshold <= 1:
        p.bad(kind, f"must be between -1 and 1 (got {threshold})")
    cond = Correlation(symbol, other, tf, bars, kind, threshold or Decimal(0), p.max_age_ms(MAX_AGE_MS))
    p.done()
    return cond
