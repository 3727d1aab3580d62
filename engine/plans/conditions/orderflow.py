"""Order flow: who is leaning on the book, and whether a large order there is real. These
are guards (they fail closed): where the source has no order book (`snapshot.book` None)
or the book cannot be read, the reading is UNKNOWN, never a guess.

Parameters (default), and when each is TRUE:
- `book_imbalance`: symbol, `levels` (5, 1..50), exactly one of `above` / `below` (-1..1),
  `max_age_ms` (5000, of the symbol's tick read with the book). (bid volume - ask volume) /
  (bid + ask volume) over the best `levels` on each side is above (buyers lean) or below
  (sellers lean) the number.
- `tick_volume_imbalance`: symbol, timeframe, `bars` (20, 1..1000), exactly one of `above`
  / `below` (-1..1), `max_age_ms` (two periods). (tick volume of up bars - of down bars) /
  (both) over the last `bars` closed bars is above or below the number.
- `spoof_suspected`: symbol, `multiple` ("5"), `within_s` (10, 1..600), `hold_s` (60,
  1..3600), `levels` (10, 1..50), `max_age_ms` (5000). A level of the best `levels` holding
  at least `multiple` x the median level volume appeared and vanished within `within_s`,
  at most `hold_s` ago. Plans use it under `not`.

`spoof_suspected` keeps what it saw between evaluations, per condition instance: the large
levels on the book and when each appeared. Its needs() is the symbol's ticks, so the
evaluator runs it on every tick; when evaluations are further apart than `within_s`, an
order could have come and gone unseen, so it forgets what it saw and is UNKNOWN until it
has watched for `within_s` again. A new leader starts watching afresh (UNKNOWN for
`within_s`), which fails closed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar

from engine.market.base import MarketDataError, Timeframe
from engine.plans.conditions.base import BookLevel, Condition, Reading, Snapshot, Truth, register
from engine.plans.conditions.fields import (
    Fields,
    OnBars,
    Unavailable,
    as_json,
    bar_age_ms,
    closed_bars,
    default_max_age_ms,
    evaluating,
    one_line,
    parser,
)

BOOK_MAX_AGE_MS = 5000
RATIO = Decimal("0.0001")


def read_book(snapshot: Snapshot, symbol: str, levels: int, max_age_ms: int) -> tuple[list[BookLevel], int]:
    """The best `levels` bids and asks, best first, and the age of the quote read with them."""
    try:
        book = snapshot.book(symbol)
        tick = snapshot.tick(symbol)
    except MarketDataError as e:
        raise Unavailable(f"{symbol} order book: {one_line(e)}") from None
    if book is None:
        raise Unavailable(f"{symbol}: the source has no order book")
    if tick.age_ms > max_age_ms:
        raise Unavailable(f"{symbol} order book: quote {tick.age_ms} ms old, over max_age_ms {max_age_ms}", tick.age_ms)
    bids = sorted((b for b in book if b.side == "bid"), key=lambda b: b.price, reverse=True)[:levels]
    asks = sorted((b for b in book if b.side == "ask"), key=lambda b: b.price)[:levels]
    if not bids or not asks:
        raise Unavailable(f"{symbol} order book: {'no bids' if not bids else 'no asks'}", tick.age_ms)
    return bids + asks, tick.age_ms


def _side(f: Fields) -> tuple[Decimal | None, Decimal | None]:
    f.exactly_one("above", "below")
    one = Decimal(1)
    return f.decimal("above", low=-one, high=one, optional=True), f.decimal("below", low=-one, high=one, optional=True)


def _compare(ratio: Decimal, above: Decimal | None, below: Decimal | None) -> tuple[Truth, str]:
    if above is not None:
        return (Truth.TRUE if ratio > above else Truth.FALSE), f"> {above}"
    assert below is not None
    return (Truth.TRUE if ratio < below else Truth.FALSE), f"< {below}"


@dataclass(frozen=True)
class BookImbalance:
    type: ClassVar[str] = "book_imbalance"
    guard: ClassVar[bool] = True
    symbol: str
    levels: int
    above: Decimal | None
    below: Decimal | None
    max_age_ms: int

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [(self.symbol, None)]

    def to_json(self) -> dict[str, object]:
        return as_json(self.type, self)

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        book, age = read_book(snapshot, self.symbol, self.levels, self.max_age_ms)
        bid = sum((Decimal(b.volume) for b in book if b.side == "bid"), Decimal(0))
        ask = sum((Decimal(b.volume) for b in book if b.side == "ask"), Decimal(0))
        if bid + ask == 0:
            return Reading.unknown(f"{self.symbol} order book: no volume on the best {self.levels} levels", age)
        ratio = ((bid - ask) / (bid + ask)).quantize(RATIO)
        truth, wanted = _compare(ratio, self.above, self.below)
        return Reading(
            truth,
            f"{self.symbol} book imbalance {ratio} over {self.levels} levels (bids {bid}, asks {ask}; {wanted} wanted)",
            value=str(ratio),
            threshold=wanted,
            age_ms=age,
        )


@register(BookImbalance.type)
@parser
def _book_imbalance(f: Fields) -> Condition:
    symbol, levels = f.symbol(), f.integer("levels", 5, 1, 50)
    above, below = _side(f)
    return BookImbalance(symbol, levels, above, below, f.max_age_ms(BOOK_MAX_AGE_MS))


@dataclass(frozen=True)
class TickVolumeImbalance(OnBars):
    type: ClassVar[str] = "tick_volume_imbalance"
    guard: ClassVar[bool] = True
    symbol: str
    timeframe: Timeframe
    bars: int
    above: Decimal | None
    below: Decimal | None
    max_age_ms: int

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        bars = closed_bars(snapshot, self.symbol, self.timeframe, self.bars, self.max_age_ms)
        age = bar_age_ms(snapshot.now_ms, bars)
        up = down = 0
        for o, c, v in zip(bars.open.tolist(), bars.close.tolist(), bars.tick_volume.tolist(), strict=True):
            if c > o:
                up += v
            elif c < o:
                down += v
        what = f"{self.symbol} {self.timeframe.name}"
        if up + down == 0:
            return Reading.unknown(f"{what}: no tick volume on up or down bars in the last {self.bars}", age)
        ratio = (Decimal(up - down) / (up + down)).quantize(RATIO)
        truth, wanted = _compare(ratio, self.above, self.below)
        return Reading(
            truth,
            f"{what}: tick volume imbalance {ratio} over {self.bars} bars (up {up}, down {down}; {wanted} wanted)",
            value=str(ratio),
            threshold=wanted,
            age_ms=age,
        )


@register(TickVolumeImbalance.type)
@parser
def _tick_volume_imbalance(f: Fields) -> Condition:
    symbol, timeframe = f.symbol(), f.timeframe()
    count = f.integer("bars", 20, 1, 1000)
    above, below = _side(f)
    return TickVolumeImbalance(symbol, timeframe, count, above, below, f.max_age_ms(default_max_age_ms(timeframe)))


@dataclass(eq=False)
class SpoofSuspected:
    """Stateful (see the module docstring): the fields starting with `_` are what it saw."""

    type: ClassVar[str] = "spoof_suspected"
    guard: ClassVar[bool] = True
    symbol: str
    multiple: Decimal
    within_s: int
    hold_s: int
    levels: int
    max_age_ms: int
    _large: dict[tuple[str, Decimal], int] = field(default_factory=dict, init=False)  # (side, price) -> first seen
    _watching_since_ms: int | None = field(default=None, init=False)
    _last_ms: int | None = field(default=None, init=False)
    _suspected: tuple[int, str] | None = field(default=None, init=False)  # when, and what vanished

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [(self.symbol, None)]

    def to_json(self) -> dict[str, object]:
        return as_json(self.type, self)

    def _forget(self, now_ms: int) -> None:
        self._large.clear()
        self._watching_since_ms = now_ms

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        now, within_ms = snapshot.now_ms, self.within_s * 1000
        if self._last_ms is None or now - self._last_ms > within_ms or now < self._last_ms:
            self._forget(now)
        self._last_ms = now
        try:
            book, age = read_book(snapshot, self.symbol, self.levels, self.max_age_ms)
        except Unavailable:
            self._forget(now)  # what happened while the book was unreadable is unknown
            raise
        median = Decimal(statistics.median(Decimal(b.volume) for b in book))
        large = {(b.side, Decimal(b.price)) for b in book if Decimal(b.volume) >= self.multiple * median and median > 0}
        for key, since in list(self._large.items()):
            if key not in large:
                del self._large[key]
                if now - since <= within_ms:
                    self._suspected = (now, f"{key[0]} {key[1]} shown {(now - since) / 1000:.1f} s")
        for key in large:
            self._large.setdefault(key, now)
        if self._suspected is not None and now - self._suspected[0] <= self.hold_s * 1000:
            when, what = self._suspected
            return Reading(
                Truth.TRUE,
                f"{self.symbol}: spoof suspected, {what} then gone, {(now - when) / 1000:.0f} s ago",
                value=what,
                threshold=f"vanished within {self.within_s} s",
                age_ms=age,
            )
        assert self._watching_since_ms is not None
        watched = now - self._watching_since_ms
        if watched < within_ms:
            return Reading.unknown(
                f"{self.symbol}: book watched {watched / 1000:.1f} s of the {self.within_s} s needed", age
            )
        return Reading(
            Truth.FALSE,
            f"{self.symbol}: no large order (>= {self.multiple} x median {median}) vanished within {self.within_s} s",
            value=str(len(large)),
            threshold=f"vanished within {self.within_s} s",
            age_ms=age,
        )


@register(SpoofSuspected.type)
@parser
def _spoof_suspected(f: Fields) -> Condition:
    return SpoofSuspected(
        f.symbol(),
        f.decimal("multiple", Decimal(5), low=Decimal("1.1"), high=Decimal(1000)) or Decimal(5),
        f.integer("within_s", 10, 1, 600),
        f.integer("hold_s", 60, 1, 3600),
        f.integer("levels", 10, 1, 50),
        f.max_age_ms(BOOK_MAX_AGE_MS),
    )
