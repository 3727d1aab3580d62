"""Institutional signatures: market structure read from closed bars by one forward scan,
hand-written so that nothing in it looks ahead (the product is these detectors; a pattern
library that repaints has no place in the live path).

The scan walks the bars oldest first and decides each bar at its close from the bars up to
it, so the patterns it finds on a prefix are exactly the full series' patterns confirmed
by then (tests/unit/test_conditions_structure.py replays every kind bar by bar).

The kinds, the bar each belongs to, and what confirms it (its lag):
- `swing_high` / `swing_low`: a bar whose high (low) beats the `k` bars on each side;
  confirmed at the close of the k-th bar after it (lag `k` bars).
- `bos_up` / `bos_down` (break of structure): the bar closing beyond the latest unbroken
  swing high (low), with the trend or before any; confirmed by that bar (lag 0 after the
  swing's own `k`).
- `choch_up` / `choch_down` (change of character): a break against the trend the previous
  break set; confirmed by that bar.
- `order_block_up` / `_down`: the last down (up) bar within `ob_bars` before an up (down)
  break, its range the zone; confirmed by the breaking bar.
- `fvg_up` / `fvg_down` (fair value gap): the middle bar of three where the third's low is
  above the first's high by `min_gap` or more (or the reverse); confirmed by the third
  (lag 1 bar).
- `mitigation_up` / `_down`: an order block, confirmed by the first later bar trading back
  into its zone.
- `breaker_down` / `breaker_up`: an up (down) order block, confirmed by the first later
  bar closing beyond its far side: the failed block is now resistance (support).
- `breaker_retest_down` / `_up`: a later bar trading into a breaker's zone and closing back
  out of it on the breaker's side; confirmed by that bar.
- `liquidity_sweep_high` / `_low`: a bar whose wick goes beyond an unbroken swing high
  (low) while its close stays inside (once per swing); confirmed by that bar.
- `mitigation_cascade_up` / `_down`: the bar whose mitigation makes `count` order blocks
  of one direction mitigated within `span` bars; confirmed by that bar.

Every condition reads the newest `lookback` closed bars (default 200, 5..1000), scans
them, and is TRUE when its pattern was confirmed within the last `within` bars (default
3; 1 = the newest bar only). The patterns of its kind the newest bar confirmed are in
`Reading.patterns` (the evaluator records them in pattern_history, once per bar time).
Parameters (default):
- `swing_structure`: symbol, timeframe, `trend` (up, down), `k` (2, 1..10), `lookback`,
  `max_age_ms`. TRUE when the last two swing highs and the last two swing lows both rise
  (up) or both fall (down).
- `break_of_structure`, `change_of_character`: symbol, timeframe, `direction` (up, down),
  `within`, `k`, `lookback`, `max_age_ms`: a `bos_<direction>` (`choch_<direction>`).
- `order_block`, `breaker_block`, `breaker_retest`: the same and `ob_bars` (10, 1..50): an
  `order_block_<direction>` not broken since, a `breaker_<direction>`, a
  `breaker_retest_<direction>`.
- `fair_value_gap`: symbol, timeframe, `direction`, `within`, `min_gap` (a price, "0"),
  `lookback`, `max_age_ms`: an `fvg_<direction>`.
- `liquidity_sweep`: symbol, timeframe, `side` (high, low), `within`, `k`, `lookback`,
  `max_age_ms`: a `liquidity_sweep_<side>`.
- `mitigation_cascade`: as `order_block`, and `count` (2, 2..10), `span` (10 bars,
  1..200): a `mitigation_cascade_<direction>`.

`max_age_ms` defaults to two periods of the timeframe. Levels are compared as integer
points (exact) and reported as Decimal prices.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from engine.market.base import Bars, Timeframe, price
from engine.plans.conditions.base import Condition, Pattern, Reading, Snapshot, Truth, register
from engine.plans.conditions.fields import (
    MAX_LOOKBACK,
    Direction,
    Fields,
    OnBars,
    bar_age_ms,
    closed_bars,
    column_bytes,
    default_max_age_ms,
    evaluating,
    parser,
    points,
)

# Scans kept: 20 symbols x 3 timeframes x a few settings, and a confluence's past closes.
# A key holds its bars' prices (32 bytes a bar), so 512 scans of the longest lookback
# keep at most 16 MB; of the default 200 bars, about 4 MB.
SCAN_CACHE = 512


@dataclass(frozen=True)
class Settings:
    """The scan's parameters: swing width, order-block search, gap size, cascade."""

    k: int = 2
    ob_bars: int = 10
    min_gap: Decimal = Decimal(0)
    count: int = 2
    span: int = 10


@dataclass(frozen=True)
class Found:
    kind: str
    bar: int  # index of the bar the pattern belongs to
    confirmed: int  # index of the bar whose close confirmed it
    low: int  # its level or zone, in points (low == high for a level)
    high: int


@dataclass
class _Swing:
    level: int
    bar: int
    broken: bool = False
    swept: bool = False


@dataclass
class _Zone:
    up: bool  # an up block (demand below) or a down block (supply above)
    bar: int
    low: int
    high: int
    confirmed: int
    mitigated: bool = False
    retested: bool = False


@dataclass
class _State:
    found: list[Found] = field(default_factory=list)
    high: _Swing | None = None
    low: _Swing | None = None
    trend: bool | None = None  # True up, False down, None before the first break
    blocks: list[_Zone] = field(default_factory=list)
    breakers: list[_Zone] = field(default_factory=list)
    block_bars: set[int] = field(default_factory=set)
    mitigations: dict[bool, list[int]] = field(default_factory=lambda: {True: [], False: []})
    cascades: set[tuple[bool, int]] = field(default_factory=set)


def scan(bars: Bars, s: Settings) -> tuple[Found, ...]:
    """Every pattern in `bars`, in the order confirmed; bar j is decided from bars 0..j only.
    Cached by content (the prices themselves are the key), so every plan reading the same
    bars with the same settings shares one scan, and a window already scanned (a
    confluence's past closes) is not scanned again."""
    return _scan(*column_bytes(bars, "open", "high", "low", "close"), bars.digits, s)


@functools.lru_cache(maxsize=SCAN_CACHE)
def _scan(o_: bytes, h_: bytes, lo_: bytes, c_: bytes, digits: int, s: Settings) -> tuple[Found, ...]:
    o, h, lo, c = (points(b) for b in (o_, h_, lo_, c_))
    min_gap = s.min_gap.scaleb(digits)  # in points
    st = _State()
    for j in range(len(c)):
        _zones(st, j, h, lo, c, s)
        _breaks(st, j, o, h, lo, c, s)
        _gaps(st, j, h, lo, min_gap)
        _swings(st, j, h, lo, s.k)
    return tuple(st.found)


def is_swing(values: Sequence[int], i: int, k: int, *, high: bool) -> bool:
    """Bar i beats the k bars on each side (strictly): decidable at the close of bar i + k."""
    if high:
        return values[i] > max(values[i - k : i]) and values[i] > max(values[i + 1 : i + k + 1])
    return values[i] < min(values[i - k : i]) and values[i] < min(values[i + 1 : i + k + 1])


def swings(values: Sequence[int], k: int, *, high: bool) -> list[int]:
    """The swing bars of one series (highs or lows) whose k bars to the right exist."""
    return [i for i in range(k, len(values) - k) if is_swing(values, i, k, high=high)]


def _swings(st: _State, j: int, h: list[int], lo: list[int], k: int) -> None:
    i = j - k
    if i < k:
        return
    if is_swing(h, i, k, high=True):
        st.high = _Swing(h[i], i)
        st.found.append(Found("swing_high", i, j, h[i], h[i]))
    if is_swing(lo, i, k, high=False):
        st.low = _Swing(lo[i], i)
        st.found.append(Found("swing_low", i, j, lo[i], lo[i]))


def _breaks(st: _State, j: int, o: list[int], h: list[int], lo: list[int], c: list[int], s: Settings) -> None:
    for up, swing in ((True, st.high), (False, st.low)):
        if swing is None or swing.broken:
            continue
        name = "up" if up else "down"
        beyond_close = c[j] > swing.level if up else c[j] < swing.level
        beyond_wick = h[j] > swing.level if up else lo[j] < swing.level
        if beyond_close:
            swing.broken = True
            kind = "choch" if st.trend is (not up) else "bos"
            st.trend = up
            st.found.append(Found(f"{kind}_{name}", j, j, swing.level, swing.level))
            _order_block(st, j, up, o, h, lo, c, s.ob_bars)
        elif beyond_wick and not swing.swept:
            swing.swept = True
            st.found.append(Found(f"liquidity_sweep_{'high' if up else 'low'}", j, j, swing.level, swing.level))


def _order_block(
    st: _State, j: int, up: bool, o: list[int], h: list[int], lo: list[int], c: list[int], ob_bars: int
) -> None:
    """The last opposite bar before the breaking one: where the move that broke began."""
    for m in range(j - 1, max(-1, j - 1 - ob_bars), -1):
        opposite = c[m] < o[m] if up else c[m] > o[m]
        if opposite:
            if m not in st.block_bars:
                st.block_bars.add(m)
                st.blocks.append(_Zone(up, m, lo[m], h[m], j))
                st.found.append(Found(f"order_block_{'up' if up else 'down'}", m, j, lo[m], h[m]))
            return


def _zones(st: _State, j: int, h: list[int], lo: list[int], c: list[int], s: Settings) -> None:
    """Blocks touched (mitigated) or closed through (now breakers), breakers retested."""
    kept: list[_Zone] = []
    for z in st.blocks:
        name = "up" if z.up else "down"
        if not z.mitigated and (lo[j] <= z.high if z.up else h[j] >= z.low):
            z.mitigated = True
            st.found.append(Found(f"mitigation_{name}", z.bar, j, z.low, z.high))
            _cascade(st, j, z.up, s)
        if c[j] < z.low if z.up else c[j] > z.high:
            flipped = "down" if z.up else "up"
            st.found.append(Found(f"breaker_{flipped}", z.bar, j, z.low, z.high))
            st.breakers.append(_Zone(not z.up, z.bar, z.low, z.high, j))
        else:
            kept.append(z)
    st.blocks = kept
    alive: list[_Zone] = []
    for b in st.breakers:
        if b.confirmed == j:
            alive.append(b)
            continue
        # a down breaker is resistance: retested by a rally into it that closes back below
        into = h[j] >= b.low if not b.up else lo[j] <= b.high
        rejected = c[j] < b.low if not b.up else c[j] > b.high
        through = c[j] > b.high if not b.up else c[j] < b.low
        if not b.retested and into and rejected:
            b.retested = True
            st.found.append(Found(f"breaker_retest_{'up' if b.up else 'down'}", j, j, b.low, b.high))
        if not through:
            alive.append(b)
    st.breakers = alive


def _cascade(st: _State, j: int, up: bool, s: Settings) -> None:
    recent = [m for m in st.mitigations[up] if m > j - s.span]
    recent.append(j)
    st.mitigations[up] = recent
    if len(recent) >= s.count and (up, j) not in st.cascades:  # one cascade per bar and direction
        st.cascades.add((up, j))
        name = "up" if up else "down"
        st.found.append(Found(f"mitigation_cascade_{name}", j, j, len(recent), len(recent)))


def _gaps(st: _State, j: int, h: list[int], lo: list[int], min_gap: Decimal) -> None:
    if j < 2:
        return
    if lo[j] > h[j - 2] and lo[j] - h[j - 2] >= min_gap:
        st.found.append(Found("fvg_up", j - 1, j, h[j - 2], lo[j]))
    if h[j] < lo[j - 2] and lo[j - 2] - h[j] >= min_gap:
        st.found.append(Found("fvg_down", j - 1, j, h[j], lo[j - 2]))


def to_pattern(bars: Bars, f: Found, s: Settings) -> Pattern:
    # what the pattern depends on: the swing width, or for a gap its minimum size
    params: dict[str, Any] = {"min_gap": str(s.min_gap)} if f.kind.startswith("fvg") else {"k": s.k}
    if f.kind.startswith("mitigation_cascade"):
        params.update(mitigated=f.low, count=s.count, span=s.span)
    elif f.low == f.high:
        params["level"] = str(price(f.low, bars.digits))
    else:
        params.update(low=str(price(f.low, bars.digits)), high=str(price(f.high, bars.digits)))
    return Pattern(
        bars.symbol,
        bars.timeframe,
        f.kind,
        int(bars.time_ms[f.bar]),
        int(bars.time_ms[f.confirmed]) + bars.timeframe.ms,
        params,
    )


class Trend(enum.Enum):
    UP = "up"
    DOWN = "down"


class Side(enum.Enum):
    HIGH = "high"
    LOW = "low"


@dataclass(frozen=True)
class SwingStructure(OnBars):
    type: ClassVar[str] = "swing_structure"
    guard: ClassVar[bool] = False
    symbol: str
    timeframe: Timeframe
    trend: Trend
    k: int
    lookback: int
    max_age_ms: int

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        bars = closed_bars(snapshot, self.symbol, self.timeframe, self.lookback, self.max_age_ms)
        s = Settings(k=self.k)
        found = scan(bars, s)
        highs = [f.low for f in found if f.kind == "swing_high"][-2:]
        lows = [f.low for f in found if f.kind == "swing_low"][-2:]
        newest = tuple(
            to_pattern(bars, f, s) for f in found if f.kind.startswith("swing_") and f.confirmed == len(bars) - 1
        )
        age = bar_age_ms(snapshot.now_ms, bars)
        what = f"{self.symbol} {self.timeframe.name}"
        if len(highs) < 2 or len(lows) < 2:
            return Reading(
                Truth.FALSE,
                f"{what}: fewer than two swing highs and lows in {self.lookback} bars",
                age_ms=age,
                patterns=newest,
            )
        up = self.trend is Trend.UP
        holds = (highs[1] > highs[0] and lows[1] > lows[0]) if up else (highs[1] < highs[0] and lows[1] < lows[0])
        p = bars.digits
        shape = (
            f"swing highs {price(highs[0], p)} -> {price(highs[1], p)}, lows {price(lows[0], p)} -> {price(lows[1], p)}"
        )
        return Reading(
            Truth.TRUE if holds else Truth.FALSE,
            f"{what}: {shape} ({'higher highs and higher lows' if up else 'lower highs and lower lows'} wanted)",
            value=shape,
            threshold=self.trend.value,
            age_ms=age,
            patterns=newest,
        )


@register(SwingStructure.type)
@parser
def _swing_structure(f: Fields) -> Condition:
    symbol, timeframe = f.symbol(), f.timeframe()
    return SwingStructure(
        symbol,
        timeframe,
        f.choice("trend", Trend),
        f.integer("k", 2, 1, 10),
        f.integer("lookback", 200, 5, MAX_LOOKBACK),
        f.max_age_ms(default_max_age_ms(timeframe)),
    )


@dataclass(frozen=True)
class RecentPattern:
    """TRUE when a pattern of `kind` was confirmed within the last `within` bars (for an
    order block: and not broken since). Each type below names its kind and its settings."""

    type: ClassVar[str]
    guard: ClassVar[bool] = False
    prefix: ClassVar[str]  # the kind without its direction
    extras: ClassVar[tuple[str, ...]]  # the Settings fields the type takes
    kind: str
    symbol: str
    timeframe: Timeframe
    within: int
    lookback: int
    settings: Settings
    max_age_ms: int

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [(self.symbol, self.timeframe)]

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"type": self.type, "symbol": self.symbol, "timeframe": self.timeframe.name}
        out["side" if self.type == "liquidity_sweep" else "direction"] = self.kind.rpartition("_")[2]
        out.update(within=self.within, lookback=self.lookback, max_age_ms=self.max_age_ms)
        for name in self.extras:
            value = getattr(self.settings, name)
            out[name] = str(value) if isinstance(value, Decimal) else value
        return out

    @evaluating
    def evaluate(self, snapshot: Snapshot) -> Reading:
        bars = closed_bars(snapshot, self.symbol, self.timeframe, self.lookback, self.max_age_ms)
        found = scan(bars, self.settings)
        last = len(bars) - 1
        mine = [f for f in found if f.kind == self.kind]
        if self.prefix == "order_block":
            broken = {f.bar for f in found if f.kind in ("breaker_up", "breaker_down")}
            mine = [f for f in mine if f.bar not in broken]
        recent = [f for f in mine if f.confirmed > last - self.within]
        newest = tuple(to_pattern(bars, f, self.settings) for f in mine if f.confirmed == last)
        age = bar_age_ms(snapshot.now_ms, bars)
        what = f"{self.symbol} {self.timeframe.name}"
        wanted = f"within {self.within} bars"
        if not recent:
            detail = f"{what}: no {self.kind} in the last {self.within} bars"
            return Reading(Truth.FALSE, detail, threshold=wanted, age_ms=age, patterns=newest)
        f = recent[-1]
        if self.prefix == "mitigation_cascade":
            at = f"{f.low} order blocks mitigated"
        elif f.low == f.high:
            at = f"{price(f.low, bars.digits)}"
        else:
            at = f"{price(f.low, bars.digits)}-{price(f.high, bars.digits)}"
        return Reading(
            Truth.TRUE,
            f"{what}: {self.kind} at {at}, confirmed {last - f.confirmed} bars ago ({wanted} wanted)",
            value=at,
            threshold=wanted,
            age_ms=age,
            patterns=newest,
        )


class BreakOfStructure(RecentPattern):
    type = "break_of_structure"
    prefix = "bos"
    extras = ("k",)


class ChangeOfCharacter(RecentPattern):
    type = "change_of_character"
    prefix = "choch"
    extras = ("k",)


class OrderBlock(RecentPattern):
    type = "order_block"
    prefix = "order_block"
    extras = ("k", "ob_bars")


class FairValueGap(RecentPattern):
    type = "fair_value_gap"
    prefix = "fvg"
    extras = ("min_gap",)


class BreakerBlock(RecentPattern):
    type = "breaker_block"
    prefix = "breaker"
    extras = ("k", "ob_bars")


class BreakerRetest(RecentPattern):
    type = "breaker_retest"
    prefix = "breaker_retest"
    extras = ("k", "ob_bars")


class LiquiditySweep(RecentPattern):
    type = "liquidity_sweep"
    prefix = "liquidity_sweep"
    extras = ("k",)


class MitigationCascade(RecentPattern):
    type = "mitigation_cascade"
    prefix = "mitigation_cascade"
    extras = ("k", "ob_bars", "count", "span")


def _recent(cls: type[RecentPattern]) -> Callable[[Fields], Condition]:
    def build(f: Fields) -> Condition:
        symbol, timeframe = f.symbol(), f.timeframe()
        if cls is LiquiditySweep:
            kind = f"{cls.prefix}_{f.choice('side', Side).value}"
        else:
            kind = f"{cls.prefix}_{f.choice('direction', Direction).value}"
        lookback = f.integer("lookback", 200, 5, MAX_LOOKBACK)
        within = f.integer("within", 3, 1, MAX_LOOKBACK)
        if within > lookback:
            f.bad("within", f"must be at most lookback ({lookback})")
        read: dict[str, Callable[[], Any]] = {
            "k": lambda: f.integer("k", 2, 1, 10),
            "ob_bars": lambda: f.integer("ob_bars", 10, 1, 50),
            "min_gap": lambda: f.decimal("min_gap", Decimal(0), low=Decimal(0)) or Decimal(0),
            "count": lambda: f.integer("count", 2, 2, 10),
            "span": lambda: f.integer("span", 10, 1, 200),
        }
        settings = Settings(**{name: read[name]() for name in cls.extras})
        return cls(kind, symbol, timeframe, within, lookback, settings, f.max_age_ms(default_max_age_ms(timeframe)))

    return build


for _cls in (
    BreakOfStructure,
    ChangeOfCharacter,
    OrderBlock,
    FairValueGap,
    BreakerBlock,
    BreakerRetest,
    LiquiditySweep,
    MitigationCascade,
):
    register(_cls.type)(parser(_recent(_cls)))
