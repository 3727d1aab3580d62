"""The price family: where a symbol's price is against a level.

- `price_above` / `price_below`: `symbol`, `level`, `price` (`bid` default, `ask`, `mid`),
  `max_age_ms` (5000). TRUE when the latest tick's price is above / below `level` (strictly).
- `crosses`: `symbol`, `timeframe`, `level`, `direction` (`above` / `below`), `max_age_ms`
  (60000). TRUE when the last closed bar closed beyond `level` and the bar before it did not.
- `holds_above` / `holds_below`: `symbol`, `timeframe`, `level`, `bars` (1..500),
  `max_age_ms` (60000). TRUE when the last `bars` closed bars all closed above / below `level`.

Only `price_above` / `price_below` read ticks (they are about the price now); the others read
closed bars only, so a reading made at a bar's close never changes when later bars arrive.
Bar prices are the bid, as the bars are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from engine.market.base import MarketDataError, Timeframe
from engine.plans.conditions.base import Reading, Snapshot, Truth, register
from engine.plans.conditions.params import Params, canon

TICK_MAX_AGE_MS = 5_000
BAR_MAX_AGE_MS = 60_000
MAX_HOLD_BARS = 500


def _truth(holds: bool) -> Truth:
    return Truth.TRUE if holds else Truth.FALSE


@dataclass(frozen=True)
class PriceLevel:
    """price_above / price_below: the current tick against a level."""

    type: str
    symbol: str
    level: Decimal
    price: str
    max_age_ms: int
    guard: ClassVar[bool] = False

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [(self.symbol, None)]

    def evaluate(self, snapshot: Snapshot) -> Reading:
        try:
            tick = snapshot.tick(self.symbol)
        except MarketDataError as exc:
            return Reading.unknown(f"{self.symbol}: {exc}")
        if tick.age_ms > self.max_age_ms:
            return Reading.unknown(
                f"{self.symbol} tick {tick.age_ms} ms old, older than {self.max_age_ms} ms", age_ms=tick.age_ms
            )
        now = {"bid": tick.bid, "ask": tick.ask, "mid": (tick.bid + tick.ask) / 2}[self.price]
        above = self.type == "price_above"
        holds = now > self.level if above else now < self.level
        sign = ">" if above else "<"
        return Reading(
            _truth(holds),
            f"{self.symbol} {self.price} {canon(now)} {sign if holds else 'not ' + sign} {canon(self.level)}",
            value=canon(now),
            threshold=canon(self.level),
            age_ms=tick.age_ms,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "symbol": self.symbol,
            "level": canon(self.level),
            "price": self.price,
            "max_age_ms": self.max_age_ms,
        }


def _price_level(type_name: str) -> Any:
    def parse(obj: Mapping[str, Any], path: str) -> PriceLevel:
        p = Params(obj, path, ("symbol", "level", "price"))
        cond = PriceLevel(
            type_name,
            p.symbol(),
            p.positive("level") or Decimal(0),
            p.choice("price", ("bid", "ask", "mid"), "bid"),
            p.max_age_ms(TICK_MAX_AGE_MS),
        )
        p.done()
        return cond

    return parse


register("price_above")(_price_level("price_above"))
register("price_below")(_price_level("price_below"))


@dataclass(frozen=True)
class Crosses:
    """crosses: the last closed bar's close is beyond the level, the one before was not."""

    symbol: str
    timeframe: Timeframe
    level: Decimal
    direction: str
    max_age_ms: int
    type: ClassVar[str] = "crosses"
    guard: ClassVar[bool] = False

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [(self.symbol, self.timeframe)]

    @property
    def lookback(self) -> int:
        return 2

    def evaluate(self, snapshot: Snapshot) -> Reading:
        closes = _closes(snapshot, self.symbol, self.timeframe, 2, self.max_age_ms)
        if isinstance(closes, Reading):
            return closes
        values, age = closes
        before, last = values
        if self.direction == "above":
            holds = before <= self.level < last
        else:
            holds = before >= self.level > last
        verb = "crossed" if holds else "did not cross"
        return Reading(
            _truth(holds),
            f"{self.symbol} {self.timeframe.name} close {canon(before)} -> {canon(last)} {verb} "
            f"{self.direction} {canon(self.level)}",
            value=canon(last),
            threshold=canon(self.level),
            age_ms=age,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "symbol": self.symbol,
            "timeframe": self.timeframe.name,
            "level": canon(self.level),
            "direction": self.direction,
            "max_age_ms": self.max_age_ms,
        }


@register("crosses")
def _parse_crosses(obj: Mapping[str, Any], path: str) -> Crosses:
    p = Params(obj, path, ("symbol", "timeframe", "level", "direction"))
    cond = Crosses(
        p.symbol(),
        p.timeframe(),
        p.positive("level") or Decimal(0),
        p.choice("direction", ("above", "below")),
        p.max_age_ms(BAR_MAX_AGE_MS),
    )
    p.done()
    return cond


@dataclass(frozen=True)
class Holds:
    """holds_above / holds_below: N closed bars in a row closed on one side of the level."""

    type: str
    symbol: str
    timeframe: Timeframe
    level: Decimal
    bars: int
    max_age_ms: int
    guard: ClassVar[bool] = False

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [(self.symbol, self.timeframe)]

    @property
    def lookback(self) -> int:
        return self.bars

    def evaluate(self, snapshot: Snapshot) -> Reading:
        closes = _closes(snapshot, self.symbol, self.timeframe, self.bars, self.max_age_ms)
        if isinstance(closes, Reading):
            return closes
        values, age = closes
        above = self.type == "holds_above"
        held = sum(1 for _ in _run(values, self.level, above))
        holds = held >= self.bars
        side = "above" if above else "below"
        extreme = min(values) if above else max(values)
        return Reading(
            _truth(holds),
            f"{self.symbol} {self.timeframe.name}: {held} of the last {self.bars} closes {side} {canon(self.level)}",
            value=canon(extreme),
            threshold=canon(self.level),
            age_ms=age,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "symbol": self.symbol,
            "timeframe": self.timeframe.name,
            "level": canon(self.level),
            "bars": self.bars,
            "max_age_ms": self.max_age_ms,
        }


def _run(values: tuple[Decimal, ...], level: Decimal, above: bool) -> Any:
    """The latest closes on the level's side, newest first, up to the first that is not."""
    for value in reversed(values):
        if not (value > level if above else value < level):
            return
        yield value


def _holds(type_name: str) -> Any:
    def parse(obj: Mapping[str, Any], path: str) -> Holds:
        p = Params(obj, path, ("symbol", "timeframe", "level", "bars"))
        cond = Holds(
            type_name,
            p.symbol(),
            p.timeframe(),
            p.positive("level") or Decimal(0),
            p.integer("bars", 1, MAX_HOLD_BARS),
            p.max_age_ms(BAR_MAX_AGE_MS),
        )
        p.done()
        return cond

    return parse


register("holds_above")(_holds("holds_above"))
register("holds_below")(_holds("holds_below"))


def _closes(
    snapshot: Snapshot, symbol: str, timeframe: Timeframe, count: int, max_age_ms: int
) -> tuple[tuple[Decimal, ...], int] | Reading:
    """The last `count` closed closes and their age, or the UNKNOWN reading saying why not."""
    try:
        bars = snapshot.bars(symbol, timeframe, count)
    except MarketDataError as exc:
        return Reading.unknown(f"{symbol} {timeframe.name}: {exc}")
    if bars.age_ms > max_age_ms:
        return Reading.unknown(
            f"{symbol} {timeframe.name} bars {bars.age_ms} ms old, older than {max_age_ms} ms", age_ms=bars.age_ms
        )
    closed = bars.closed()
    if closed.closed_count < count:
        return Reading.unknown(
            f"{symbol} {timeframe.name}: {closed.closed_count} closed bars, {count} needed", age_ms=bars.age_ms
        )
    return closed.prices("close")[-count:], bars.age_ms
