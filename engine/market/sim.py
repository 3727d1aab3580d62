"""The sim source: a synthetic feed that is a pure function of (seed, time).

Any process that asks for EURUSD at 12:00:00.250 gets the same bid and ask, so a restarted
replica, a new leader and a test agree without shipping ticks around. Nothing is stateful:
every random number is a hash of (seed, stream, counter) -- a counter-based generator --
and the path is built top-down, so the price at t needs only the few numbers above it:

    day opens      a mean-reverting sum of the last K daily shocks (no history to replay)
    hour opens     a Brownian bridge between two day opens (24 shocks)
    minute opens   a bridge between two hour opens (60 shocks)
    minute bar     its close one tick before the next minute's open; its high and low
                   drawn from the exact law of a bridge's maximum and minimum
    ticks          every 250 ms: a bridge from the minute's open to its close, bent so
                   that its extremes are exactly the bar's high and low

so bars(M1, 500) needs no ticks at all, and a tick lookup computes one minute. What moves
the variance, the same for every symbol (so correlations hold at every scale): the hour
of the day (Asia quiet, the London/New York overlap busy), a daily volatility regime with
persistence, and scheduled news (08:30, 12:30, 14:00, 18:00 UTC on some weekdays: a
burst of variance and a wider spread, decaying over the next minutes). Symbols load on
one US dollar factor (`usd_beta`), so DXY moves against EURUSD.

Bit-for-bit determinism across machines: the generator uses only IEEE-754 operations that
are correctly rounded everywhere (+, -, *, /, sqrt; sequential cumulative sums; math.fsum),
never a libm or SIMD transcendental whose last bit may differ between CPUs: normals come
from sums of uniforms, exponentials from a polynomial and repeated squaring.

The sim runs around the clock, weekends included (a feed with gaps is the replay's job).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.market.bars import aggregate
from engine.market.base import (
    Bars,
    MarketSpec,
    Tick,
    Ticks,
    Timeframe,
    TradeMode,
    UnknownSymbol,
    check_count,
    price,
)
from engine.market.simsymbols import CATALOG, DEFAULT_SYMBOLS, SimSymbol

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

STEP_MS = 250  # one tick per step
TICKS = 240  # steps per minute
MINUTE_MS = 60_000
DAY_MINUTES = 1440
SECONDS_PER_YEAR = 365.0 * 86400.0
K_DAYS = 1024  # daily shocks a day open remembers
PHI = 0.995  # their decay: mean reversion over about a year, a random walk over weeks
NEWS_SLOTS = (8 * 60 + 30, 12 * 60 + 30, 14 * 60, 18 * 60)  # minute of the UTC day
NEWS_CHANCE = 0.3  # of an event in a slot on a weekday
ROLLOVER_HOUR = 21  # spreads widen at the daily rollover
# Volatility by UTC hour (Asia, London, the overlap, New York, rollover).
SEASON = np.array(
    [0.6] * 7 + [0.9] + [1.2] * 4 + [1.5] * 4 + [1.0] * 5 + [0.5] + [0.6] * 2,
    dtype=np.float64,
)
SEASON2 = SEASON * SEASON

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_C1 = _U64(0xBF58476D1CE4E5B9)
_C2 = _U64(0x94D049BB133111EB)
_TAIL_KEY = _U64(0xD1B54A32D192ED03)
_SQRT3 = math.sqrt(3.0)
_TAIL_SCALE = 2.5  # one shock in 32 is 2.5 times larger: fat tails
_TAIL_NORM = 1.0 / math.sqrt(31.0 / 32.0 + _TAIL_SCALE * _TAIL_SCALE / 32.0)
_INV_2_16 = 1.0 / 65536.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# The small caches below are shared by every thread reading one source (a replica's feed,
# executor and HTTP): a key another thread evicted meanwhile is no error, the value in hand
# is still right (every entry is a pure function of its key).
def _touch(cache: OrderedDict[int, Any], key: int) -> None:
    try:
        cache.move_to_end(key)
    except KeyError:
        pass


def _put(cache: OrderedDict[int, Any], key: int, value: Any, size: int) -> None:
    cache[key] = value
    while len(cache) > size:
        try:
            cache.popitem(last=False)
        except KeyError:
            break


# -- the counter-based generator ---------------------------------------------------------


def _stream(seed: int, *parts: object) -> np.uint64:
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return _U64(int.from_bytes(digest, "little"))


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: a bijection that scrambles every bit of a counter."""
    x = x ^ (x >> _U64(30))
    x = x * _C1
    x = x ^ (x >> _U64(27))
    x = x * _C2
    return x ^ (x >> _U64(31))


def _bits(stream: np.uint64, counters: Ints) -> npt.NDArray[np.uint64]:
    return _mix(stream + np.asarray(counters, dtype=np.int64).astype(_U64) * _GOLDEN)


def _uniform(stream: np.uint64, counters: Ints) -> Floats:
    """(0, 1), 53 bits."""
    return ((_bits(stream, counters) >> _U64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _normal(stream: np.uint64, counters: Ints) -> Floats:
    """Unit-variance shocks: the sum of four 16-bit uniforms (near-normal, no libm), one in
    32 scaled up for fat tails."""
    h = _bits(stream, counters)
    mask = _U64(0xFFFF)
    total = (h & mask).astype(np.float64)
    total = total + ((h >> _U64(16)) & mask).astype(np.float64)
    total = total + ((h >> _U64(32)) & mask).astype(np.float64)
    total = total + (h >> _U64(48)).astype(np.float64)
    z = ((total + 2.0) * _INV_2_16 - 2.0) * _SQRT3
    tail = (_mix(h ^ _TAIL_KEY) & _U64(31)) == _U64(0)
    return np.where(tail, z * _TAIL_SCALE, z) * _TAIL_NORM


def _exp(x: Floats) -> Floats:
    """e**x from + and * only (bit-identical everywhere): a Taylor polynomial of x/1024,
    squared ten times. Relative error ~1e-13 for |x| < 5, far below a point."""
    y = np.asarray(x, dtype=np.float64) * (1.0 / 1024.0)
    p = 1.0 + y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (1.0 / 720.0))))))
    for _ in range(10):
        p = p * p
    return p


def _bridge(start: Floats, end: Floats, var: Floats, z: Floats) -> Floats:
    """Rows of Brownian bridges: from start[i] to end[i] in var.shape[1] steps whose
    variances are var[i] (the exact law of a Gaussian walk conditioned on its end).
    Returns the n x (k + 1) points, first = start and last = end exactly."""
    inc = np.sqrt(var) * z
    walk = np.cumsum(inc, axis=1)
    cum = np.cumsum(var, axis=1)
    frac = cum / cum[:, -1:]
    out = np.empty((var.shape[0], var.shape[1] + 1), dtype=np.float64)
    out[:, 0] = start
    out[:, 1:] = start[:, None] + frac * (end - start)[:, None] + (walk - frac * walk[:, -1:])
    out[:, -1] = end
    return out


# -- the calendar every symbol shares ---------------------------------------------------


@dataclass(frozen=True)
class _Day:
    regime: float  # volatility multiplier of the day
    hour_weight: Floats  # 24: sum over the hour's minutes of season^2 x news variance
    weight: float  # the day's sum
    events: tuple[tuple[int, float], ...]  # (minute of day, variance multiplier)


class _Calendar:
    def __init__(self, seed: int) -> None:
        self._regime = _stream(seed, "regime")
        self._news = _stream(seed, "news")
        self._size = _stream(seed, "news-size")
        self._days: dict[int, _Day] = {}
        self._minutes: OrderedDict[int, tuple[Floats, Floats]] = OrderedDict()

    def day(self, d: int) -> _Day:
        got = self._days.get(d)
        if got is None:
            self.prepare(d, d)
            got = self._days[d]
        return got

    def prepare(self, d0: int, d1: int) -> None:
        """Compute days d0..d1 at once (vectorised); each day's numbers do not depend on
        which others were computed with it."""
        missing = [d for d in range(d0, d1 + 1) if d not in self._days]
        if not missing:
            return
        lo, hi = missing[0], missing[-1]
        days = np.arange(lo - 4, hi + 1, dtype=np.int64)
        z = _normal(self._regime, days)
        # A moving average of five daily draws: regimes persist for days.
        avg = (z[4:] + z[3:-1] + z[2:-2] + z[1:-3] + z[:-4]) * (1.0 / math.sqrt(5.0))
        regimes = _exp(0.4 * avg)
        slots = np.arange(len(NEWS_SLOTS), dtype=np.int64)
        for i, d in enumerate(range(lo, hi + 1)):
            if d in self._days:
                continue
            events: list[tuple[int, float]] = []
            if (d + 3) % 7 < 5:  # 1970-01-01 was a Thursday; Monday..Friday
                counters = d * len(NEWS_SLOTS) + slots
                chance = _uniform(self._news, counters)
                size = _uniform(self._size, counters)
                for j, minute in enumerate(NEWS_SLOTS):
                    if chance[j] < NEWS_CHANCE:
                        events.append((minute, 16.0 + 48.0 * float(size[j])))  # sd x4..x8 that minute
            hour_weight = SEASON2 * 60.0
            for minute, mult in events:
                for k in range(11):  # the event's minute and ten after it
                    m = minute + k
                    if m < DAY_MINUTES:
                        hour_weight[m // 60] += SEASON2[m // 60] * (_news_decay(mult, k) - 1.0)
            self._days[d] = _Day(float(regimes[i]), hour_weight, math.fsum(hour_weight.tolist()), tuple(events))

    def minutes(self, d: int) -> tuple[Floats, Floats]:
        """(variance weight, spread multiplier) of each minute of day d."""
        got = self._minutes.get(d)
        if got is not None:
            _touch(self._minutes, d)
            return got
        day = self.day(d)
        weight = np.repeat(SEASON2, 60)
        spread = np.ones(DAY_MINUTES, dtype=np.float64)
        spread[ROLLOVER_HOUR * 60 : (ROLLOVER_HOUR + 1) * 60] = 2.5
        regime_spread = 1.0 + 0.5 * max(day.regime - 1.0, 0.0)
        for minute, mult in day.events:
            for k in range(11):
                m = minute + k
                if m < DAY_MINUTES:
                    weight[m] = SEASON2[m // 60] * _news_decay(mult, k)
                    spread[m] = max(spread[m], 4.0 if k == 0 else (2.0 if k <= 5 else 1.0))
        got = (weight, spread * regime_spread)
        _put(self._minutes, d, got, 64)
        return got


def _news_decay(mult: float, k: int) -> float:
    return mult if k == 0 else 1.0 + (mult - 1.0) * 0.5**k


# -- one symbol's path -------------------------------------------------------------------


@dataclass(frozen=True)
class _Minutes:
    """Minutes m0.. of one symbol: log-mid open, high, low, close; spread (points); tick variance."""

    m0: int
    open: Floats
    high: Floats
    low: Floats
    close: Floats
    spread: Ints
    tick_var: Floats


class _Path:
    def __init__(self, seed: int, sym: SimSymbol, calendar: _Calendar) -> None:
        self.sym = sym
        self.cal = calendar
        self.sigma2 = (sym.annual_vol * sym.annual_vol) / SECONDS_PER_YEAR  # per second, log mid
        self.beta = sym.usd_beta
        self.idio = math.sqrt(1.0 - sym.usd_beta * sym.usd_beta)
        self.scale = float(10**sym.digits)
        self._usd = {lvl: _stream(seed, "usd", lvl) for lvl in ("D", "H", "M", "C", "T")}
        self._own = {lvl: _stream(seed, sym.name, lvl) for lvl in ("D", "H", "M", "C", "T")}
        self._extreme = _stream(seed, sym.name, "E")
        self._jitter = _stream(seed, sym.name, "S")
        self._last = _stream(seed, sym.name, "L")
        self._day_open: dict[int, float] = {}
        self._ticks: OrderedDict[int, _MinuteTicks] = OrderedDict()
        self._phi = np.cumprod(np.full(K_DAYS, PHI))[::-1] / PHI  # PHI**(K-1) .. PHI**0

    def shocks(self, level: str, counters: Ints) -> Floats:
        """Shocks that load on the dollar factor: the same factor draw for every symbol."""
        return self.beta * _normal(self._usd[level], counters) + self.idio * _normal(self._own[level], counters)

    # day opens: a truncated AR(1) of daily shocks, each scaled by its day's variance.
    def day_opens(self, d0: int, d1: int) -> Floats:
        """Log-mid at 00:00 UTC of days d0..d1."""
        missing = [d for d in range(d0, d1 + 1) if d not in self._day_open]
        if missing:
            lo, hi = missing[0], missing[-1]
            first = lo - K_DAYS
            self.cal.prepare(first, hi - 1)
            days = np.arange(first, hi, dtype=np.int64)
            var = np.array(
                [self.sigma2 * 60.0 * self.cal.day(int(e)).regime ** 2 * self.cal.day(int(e)).weight for e in days]
            )
            terms = np.sqrt(var) * self.shocks("D", days)
            for d in range(lo, hi + 1):
                if d not in self._day_open:
                    window = terms[d - K_DAYS - first : d - first]
                    self._day_open[d] = math.fsum((window * self._phi).tolist())
        return np.array([self._day_open[d] for d in range(d0, d1 + 1)], dtype=np.float64)

    def minutes(self, m0: int, m1: int) -> _Minutes:
        """Minutes m0 .. m1 - 1 (any span; computed a day's worth at a time)."""
        d0, d1 = m0 // DAY_MINUTES, (m1 - 1) // DAY_MINUTES
        opens = self.day_opens(d0, d1 + 1)
        parts: list[_Minutes] = []
        for d in range(d0, d1 + 1):
            lo = max(m0, d * DAY_MINUTES)
            hi = min(m1, (d + 1) * DAY_MINUTES)
            parts.append(self._day_minutes(d, opens[d - d0], opens[d - d0 + 1], lo, hi))
        if len(parts) == 1:
            return parts[0]
        return _Minutes(
            m0,
            np.concatenate([p.open for p in parts]),
            np.concatenate([p.high for p in parts]),
            np.concatenate([p.low for p in parts]),
            np.concatenate([p.close for p in parts]),
            np.concatenate([p.spread for p in parts]),
            np.concatenate([p.tick_var for p in parts]),
        )

    def _day_minutes(self, d: int, x0: float, x1: float, lo: int, hi: int) -> _Minutes:
        day = self.cal.day(d)
        base = self.sigma2 * 60.0 * day.regime * day.regime  # variance of a calm-hour minute, per season^2
        hour_var = (base * day.hour_weight)[None, :]
        hours = d * 24 + np.arange(24, dtype=np.int64)
        hb = _bridge(np.array([x0]), np.array([x1]), hour_var, self.shocks("H", hours)[None, :])[0]
        h0, h1 = (lo // 60) - d * 24, ((hi - 1) // 60) - d * 24 + 1
        weight, spread_mult = self.cal.minutes(d)
        minute_var = (base * weight[h0 * 60 : h1 * 60]).reshape(h1 - h0, 60)
        counters = (d * DAY_MINUTES + h0 * 60 + np.arange((h1 - h0) * 60, dtype=np.int64)).reshape(h1 - h0, 60)
        mb = _bridge(hb[h0:h1], hb[h0 + 1 : h1 + 1], minute_var, self.shocks("M", counters))
        first = lo - (d * DAY_MINUTES + h0 * 60)
        n = hi - lo
        opens = mb[:, :60].ravel()[first : first + n]
        nexts = mb[:, 1:].ravel()[first : first + n]
        var = minute_var.ravel()[first : first + n]
        minutes = np.arange(lo, hi, dtype=np.int64)
        tick_var = var * (1.0 / TICKS)
        closes = nexts - np.sqrt(tick_var) * self.shocks("C", minutes)
        # The extremes of a bridge from o to c with variance V: P(max > x) = exp(-2(x-o)(x-c)/V),
        # so max = mid + sqrt(half^2 + V E / 2) for E ~ Exp(1), here the half-sum of two squared shocks.
        bridge_var = tick_var * float(TICKS - 1)
        e = _normal(self._extreme, np.stack([4 * minutes + k for k in range(4)]))
        e_high = (e[0] * e[0] + e[1] * e[1]) * 0.5
        e_low = (e[2] * e[2] + e[3] * e[3]) * 0.5
        mid = (opens + closes) * 0.5
        half2 = (closes - opens) * (closes - opens) * 0.25
        highs = np.maximum(mid + np.sqrt(half2 + bridge_var * e_high * 0.5), np.maximum(opens, closes))
        lows = np.minimum(mid - np.sqrt(half2 + bridge_var * e_low * 0.5), np.minimum(opens, closes))
        jitter = (_bits(self._jitter, minutes) % _U64(3)).astype(np.int64)  # 0, 1 or 2 points
        mult = spread_mult[lo - d * DAY_MINUTES : hi - d * DAY_MINUTES]
        spread = np.maximum(1, np.floor(self.sym.spread * mult + 0.5).astype(np.int64)) + jitter
        return _Minutes(lo, opens, highs, lows, closes, spread, tick_var)

    def bid(self, x: Floats, spread: Ints) -> Ints:
        """Bid in points from log-mid: monotone in the mid for a given spread."""
        mid = self.sym.base * _exp(x) * self.scale
        return np.floor(mid - spread * 0.5 + 0.5).astype(np.int64)

    def minute_bars(self, symbol: str, m0: int, m1: int) -> Bars:
        """Closed M1 bars of minutes m0 .. m1 - 1 (every minute has TICKS ticks)."""
        return self._bars(symbol, m0, self.minutes(m0, m1))

    def _bars(self, symbol: str, m0: int, mins: _Minutes) -> Bars:
        o = self.bid(mins.open, mins.spread)
        h = self.bid(mins.high, mins.spread)
        lo = self.bid(mins.low, mins.spread)
        c = self.bid(mins.close, mins.spread)
        # Rounding to points could in theory invert an ulp; the bar's extremes bound it anyway.
        h = np.maximum(h, np.maximum(o, c))
        lo = np.minimum(lo, np.minimum(o, c))
        n = len(o)
        times = np.arange(m0, m0 + n, dtype=np.int64) * MINUTE_MS
        volume = np.full(n, TICKS, dtype=np.int64)
        return Bars(symbol, Timeframe.M1, self.sym.digits, times, o, h, lo, c, volume, mins.spread)

    def minute_ticks(self, m: int) -> _MinuteTicks:
        """The TICKS ticks of minute m, in points."""
        got = self._ticks.get(m)
        if got is not None:
            _touch(self._ticks, m)
            return got
        mins = self.minutes(m, m + 1)
        bar = self._bars(self.sym.name, m, mins)
        b, c, hi, lo = mins.open[0], mins.close[0], mins.high[0], mins.low[0]
        z = self.shocks("T", m * TICKS + np.arange(TICKS - 1, dtype=np.int64))
        var = np.full((1, TICKS - 1), mins.tick_var[0])
        path = _bend(_bridge(np.array([b]), np.array([c]), var, z[None, :])[0], b, c, hi, lo)
        spread = int(mins.spread[0])
        # The bar's extremes are exact ticks: the bent path hits the very numbers the bar's
        # high and low were priced from (the clip only absorbs an ulp of rounding).
        bid = np.clip(self.bid(path, np.full(TICKS, spread)), bar.low[0], bar.high[0])
        bid[0], bid[-1] = bar.open[0], bar.close[0]
        ask = bid + spread
        if self.sym.has_last:
            at_ask = (_bits(self._last, m * TICKS + np.arange(TICKS, dtype=np.int64)) & _U64(1)).astype(np.int64)
            last = bid + at_ask * spread
        else:
            last = np.full(TICKS, -1, dtype=np.int64)
        got = _MinuteTicks(bid, ask, last, spread)
        _put(self._ticks, m, got, 16)
        return got


@dataclass(frozen=True)
class _MinuteTicks:
    bid: Ints
    ask: Ints
    last: Ints  # -1: no trade price
    spread: int


def _bend(path: Floats, o: float, c: float, hi: float, lo: float) -> Floats:
    """Stretch the bridge's excursions above max(o, c) and below min(o, c), monotonically,
    so that its interior reaches exactly `hi` and `lo`; the ends stay put."""
    up, dn = max(o, c), min(o, c)
    inner = path[1:-1]
    imax = 1 + int(np.argmax(inner))
    imin = 1 + int(np.argmin(inner))
    if imin == imax:  # a flat interior: any two distinct ticks will do
        imin = 1 if imax != 1 else 2
    out = path.copy()
    if path[imax] > up:
        out = np.where(out > up, up + (out - up) * ((hi - up) / (path[imax] - up)), out)
    if path[imin] < dn:
        out = np.where(out < dn, dn + (out - dn) * ((lo - dn) / (path[imin] - dn)), out)
    out[imax], out[imin] = hi, lo
    out = np.clip(out, lo, hi)
    out[0], out[-1] = o, c
    return out


class SimSource:
    """The `Source` protocol over the synthetic paths. `clock` returns epoch ms (UTC)."""

    name = "sim"
    live = True

    def __init__(
        self,
        seed: int = 0,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        unknown = [s for s in symbols if s not in CATALOG]
        if unknown:
            raise UnknownSymbol(f"the sim source has no symbol {', '.join(unknown)} (it has {', '.join(CATALOG)})")
        self.seed = seed
        self._clock = clock
        self._calendar = _Calendar(seed)
        self._paths = {s: _Path(seed, CATALOG[s], self._calendar) for s in symbols}

    def now_ms(self) -> int:
        return self._clock()

    def symbols(self) -> list[str]:
        return list(self._paths)

    def _path(self, symbol: str) -> _Path:
        path = self._paths.get(symbol)
        if path is None:
            raise UnknownSymbol(f"unknown symbol {symbol!r}: the sim source has {', '.join(self._paths)}")
        return path

    def spec(self, symbol: str) -> MarketSpec:
        p = self._path(symbol)
        s = p.sym
        tick_value = s.contract_size * s.tick_size
        if s.usd_base:  # profit in the quote currency: USD per tick = that / price, rounded up
            mid = self.tick(symbol)
            tick_value = (tick_value / ((mid.bid + mid.ask) / 2)).quantize(Decimal("1e-8"), rounding=ROUND_CEILING)
        return MarketSpec(
            symbol=symbol,
            digits=s.digits,
            point=Decimal(1).scaleb(-s.digits),
            contract_size=s.contract_size,
            tick_size=s.tick_size,
            tick_value=tick_value,
            volume_min=s.volume_min,
            volume_max=s.volume_max,
            volume_step=s.volume_step,
            stops_level=s.stops_level,
            freeze_level=s.freeze_level,
            trade_mode=TradeMode.FULL,
            currency_profit=s.currency_profit,
        )

    # -- the pure functions of time ----------------------------------------------------------

    def tick_at(self, symbol: str, t_ms: int) -> Tick:
        """The tick in force at t_ms (the last step at or before it), aged from t_ms."""
        p = self._path(symbol)
        step = t_ms // STEP_MS
        m, i = divmod(step, TICKS)
        mt = p.minute_ticks(m)
        bid, ask = mt.bid, mt.ask
        at = step * STEP_MS
        lp = int(mt.last[i])
        digits = p.sym.digits
        return Tick(
            symbol,
            at,
            price(bid[i], digits),
            price(ask[i], digits),
            price(lp, digits) if lp >= 0 else None,
            t_ms - at,
        )

    def minute_bars(self, symbol: str, first_ms: int, end_ms: int) -> Bars:
        """M1 bars opened in [first_ms, end_ms) (minute-aligned), all of them as if closed."""
        return self._path(symbol).minute_bars(symbol, first_ms // MINUTE_MS, end_ms // MINUTE_MS)

    def regime(self, t_ms: int) -> float:
        """The day's volatility multiplier (about 0.5 calm .. 2 volatile)."""
        return self._calendar.day(t_ms // (DAY_MINUTES * MINUTE_MS)).regime

    def news(self, day_ms: int) -> list[int]:
        """The scheduled news minutes (epoch ms) of the UTC day holding day_ms."""
        d = day_ms // (DAY_MINUTES * MINUTE_MS)
        return [(d * DAY_MINUTES + minute) * MINUTE_MS for minute, _ in self._calendar.day(d).events]

    # -- the Source protocol ---------------------------------------------------------------

    def tick(self, symbol: str) -> Tick:
        return self.tick_at(symbol, self._clock())

    def ticks(self, symbol: str, after_ms: int, until_ms: int, limit: int) -> Ticks:
        p = self._path(symbol)
        first = after_ms // STEP_MS + 1
        last = min(until_ms // STEP_MS, first + limit - 1)
        if last < first:
            return Ticks.empty(symbol, p.sym.digits)
        parts: list[tuple[Ints, Ints, Ints, Ints]] = []
        for m in range(first // TICKS, last // TICKS + 1):
            lo, hi = max(first, m * TICKS) - m * TICKS, min(last, m * TICKS + TICKS - 1) - m * TICKS + 1
            mt = p.minute_ticks(m)
            bid, ask, lp = mt.bid, mt.ask, mt.last
            steps = np.arange(m * TICKS + lo, m * TICKS + hi, dtype=np.int64)
            parts.append((steps * STEP_MS, bid[lo:hi], ask[lo:hi], lp[lo:hi]))
        return Ticks(symbol, p.sym.digits, *(np.concatenate([part[k] for part in parts]) for k in range(4)))

    def closed_bars(self, symbol: str, timeframe: Timeframe, count: int, after_ms: int | None = None) -> Bars:
        count = check_count(count)
        p = self._path(symbol)
        now = self._clock()
        last = timeframe.open_of(now) - timeframe.ms  # the newest closed bar
        first = last - (count - 1) * timeframe.ms
        if after_ms is not None:
            first = max(first, timeframe.open_of(after_ms) + timeframe.ms)
        if first > last:
            return Bars.empty(symbol, timeframe, p.sym.digits)
        m1 = self.minute_bars(symbol, first, last + timeframe.ms)
        return aggregate(m1, timeframe)

    def forming_bar(self, symbol: str, timeframe: Timeframe) -> Bars:
        p = self._path(symbol)
        now = self._clock()
        step = now // STEP_MS
        m, i = divmod(step, TICKS)
        mt = p.minute_ticks(m)
        seen = mt.bid[: i + 1]
        minute = Bars(
            symbol,
            Timeframe.M1,
            p.sym.digits,
            np.array([m * MINUTE_MS]),
            seen[:1],
            np.array([seen.max()]),
            np.array([seen.min()]),
            seen[-1:],
            np.array([i + 1]),
            np.array([mt.spread]),
        )
        opened = timeframe.open_of(now)
        if opened < m * MINUTE_MS:
            before = self.minute_bars(symbol, opened, m * MINUTE_MS)
            minute = Bars.concat([before, minute])
        bar = aggregate(minute, timeframe)
        return bar.slice(0, 1, forming=True).aged(now, now - step * STEP_MS)
