"""The replay source: a CSV of ticks or of OHLCV bars, for one or more symbols, played at
HAEXEC_MARKET_SPEED (1 = real time, N = N times faster, max = as fast as it is pumped).

Files (a header row names the columns, in any order; times ISO 8601, UTC when no offset):

    ticks:  time,symbol,bid,ask[,last][,volume]
    bars:   time,symbol,open,high,low,close[,volume|tick_volume][,spread][,timeframe]

A bar row is its open time; its timeframe (default M1) is one per symbol, and coarser
timeframes are built from it (never finer). Rows must be sorted by time; a row that goes
back in time, repeats an earlier row (a tick identical to one at the same time, a bar of a
symbol at a time it already has), has a price that is not a positive number, a bid above
its ask or a high below its low is refused with its line number, and nothing is loaded.
A symbol's digits are the most decimals its prices have in the file.

The replay's clock is its data time: it starts at the file's first event (or where the
persisted cursor says it stopped) and runs at `speed` x the wall clock. A tick is visible
at its time, a bar at its close (open + timeframe): a bar file never shows a bar before
it is over. After the last event the clock keeps running, so every reading ages and the
stopped feed is reported stale.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Protocol

import numpy as np

from common.timefmt import iso_utc
from engine.market.bars import BarBuilder, Row, aggregate, to_bars
from engine.market.base import (
    BadInput,
    BadRequest,
    Bars,
    FeedUnavailable,
    Int64s,
    MarketSpec,
    Tick,
    Ticks,
    Timeframe,
    TradeMode,
    UnknownSymbol,
    check_count,
    price,
    utc,
)
from engine.market.sim import wall_ms
from engine.market.simsymbols import CATALOG

log = logging.getLogger("haexec.engine.market")

TICK_COLUMNS = ("bid", "ask")
BAR_COLUMNS = ("open", "high", "low", "close")
MAX_DIGITS = 10
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SymbolData:
    symbol: str
    kind: str  # "ticks" or "bars"
    digits: int
    timeframe: Timeframe | None  # of a bar file's rows
    ticks: Ticks | None  # kind "ticks"
    bars: Bars  # M1 built from ticks, or the file's bars; all of them, as if closed
    release_ms: Int64s  # when each tick / bar becomes visible


@dataclass(frozen=True)
class ReplayData:
    path: Path
    digest: str  # sha256 of the file: the cursor belongs to these exact bytes
    symbols: dict[str, SymbolData]
    release_ms: Int64s  # every event's release time, sorted


def load(path: Path) -> ReplayData:
    """Read and check the whole file; BadInput (one line, with the line number) on the
    first problem, before anything is kept."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"replay file {path}: cannot read it ({exc.strerror})") from None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(f"replay file {path}: not UTF-8 text") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise BadInput(f"replay file {path}: empty (it needs a header row and at least one row)")
    names = [h.strip().lower() for h in header]
    where = f"replay file {path}"
    kind = _kind(names, where)
    col = {n: i for i, n in enumerate(names)}
    per_symbol: dict[str, list[tuple[int, int, list[Decimal], int, int, str | None]]] = {}
    last_time: int | None = None
    last_line = 0
    seen_at_time: set[tuple[object, ...]] = set()
    bar_times: dict[str, set[int]] = {}
    for line, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(names):
            raise BadInput(f"{where} line {line}: {len(row)} fields, the header has {len(names)}")
        at = f"{where} line {line}"
        t = _time(row[col["time"]], at)
        symbol = row[col["symbol"]].strip()
        if not symbol:
            raise BadInput(f"{at}: no symbol")
        if last_time is not None and t < last_time:
            raise BadInput(
                f"{at}: time {iso_utc(utc(t))} is before line {last_line}'s {iso_utc(utc(last_time))} "
                "(rows must be sorted by time)"
            )
        if t != last_time:
            seen_at_time.clear()
        last_time, last_line = t, line
        fields = TICK_COLUMNS + (("last",) if "last" in col else ()) if kind == "ticks" else BAR_COLUMNS
        values = [_number(row[col[f]], f, at, allow_zero=f == "last") for f in fields]
        volume = _count(row, col, ("volume", "tick_volume"), at)
        spread = _count(row, col, ("spread",), at)
        tf_name = row[col["timeframe"]].strip() if "timeframe" in col else None
        if kind == "ticks":
            bid, ask = values[0], values[1]
            if bid > ask:
                raise BadInput(f"{at}: {symbol} bid {bid} is above its ask {ask}")
            key = (symbol, *values)
            if key in seen_at_time:
                raise BadInput(f"{at}: duplicates an earlier row ({symbol} at {iso_utc(utc(t))})")
            seen_at_time.add(key)
        else:
            o, h, lo, c = values
            if not (lo <= min(o, c) and max(o, c) <= h):
                raise BadInput(f"{at}: {symbol} bar is not low <= open, close <= high ({o} {h} {lo} {c})")
            times = bar_times.setdefault(symbol, set())
            if t in times:
                raise BadInput(f"{at}: duplicates an earlier row ({symbol} bar at {iso_utc(utc(t))})")
            times.add(t)
        per_symbol.setdefault(symbol, []).append((line, t, values, volume, spread, tf_name))
    if not per_symbol:
        raise BadInput(f"replay file {path}: no rows after the header")
    symbols = {s: _symbol(s, kind, rows, where) for s, rows in per_symbol.items()}
    release = np.sort(np.concatenate([d.release_ms for d in symbols.values()]), kind="stable")
    return ReplayData(path, digest, symbols, release)


def _kind(names: list[str], where: str) -> str:
    for required in ("time", "symbol"):
        if required not in names:
            raise BadInput(f"{where}: the header has no {required!r} column")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadInput(f"{where}: the header names {', '.join(twice)} more than once")
    ticks = all(c in names for c in TICK_COLUMNS)
    bars = all(c in names for c in BAR_COLUMNS)
    if ticks == bars:
        raise BadInput(
            f"{where}: the header must have bid,ask (ticks) or open,high,low,close (bars), not "
            + ("both" if ticks else "neither")
        )
    return "ticks" if ticks else "bars"


def _time(text: str, at: str) -> int:
    raw = text.strip()
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise BadInput(f"{at}: time {raw!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - EPOCH) // timedelta(milliseconds=1)  # exact: no float on the way


def _number(text: str, name: str, at: str, *, allow_zero: bool = False) -> Decimal:
    raw = text.strip()
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise BadInput(f"{at}: {name} {raw!r} is not a number") from None
    if not value.is_finite() or value < 0 or (value == 0 and not allow_zero):
        raise BadInput(f"{at}: {name} {raw!r} is not a positive price")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_DIGITS:
        raise BadInput(f"{at}: {name} {raw!r} has more than {MAX_DIGITS} decimals")
    return value


def _count(row: list[str], col: dict[str, int], names: tuple[str, ...], at: str) -> int:
    for name in names:
        if name in col:
            raw = row[col[name]].strip()
            if raw == "":
                return 0
            try:
                value = Decimal(raw)
            except InvalidOperation:
                raise BadInput(f"{at}: {name} {raw!r} is not a number") from None
            if not value.is_finite() or value < 0:
                raise BadInput(f"{at}: {name} {raw!r} must be >= 0")
            return int(value)
    return 0


def _symbol(
    symbol: str, kind: str, rows: list[tuple[int, int, list[Decimal], int, int, str | None]], where: str
) -> SymbolData:
    digits = 0
    for _, _, values, _, _, _ in rows:
        for v in values:
            exponent = v.as_tuple().exponent
            if isinstance(exponent, int):
                digits = max(digits, -exponent)
    scale = Decimal(1).scaleb(digits)

    def points(v: Decimal) -> int:
        return int(v * scale)

    times = np.array([r[1] for r in rows], dtype=np.int64)
    if kind == "ticks":
        bid = np.array([points(r[2][0]) for r in rows], dtype=np.int64)
        ask = np.array([points(r[2][1]) for r in rows], dtype=np.int64)
        last = np.array([points(r[2][2]) if len(r[2]) > 2 and r[2][2] > 0 else -1 for r in rows], dtype=np.int64)
        ticks = Ticks(symbol, digits, times, bid, ask, last)
        builder = BarBuilder(symbol, Timeframe.M1, digits)
        built: list[Row] = []
        for i in range(len(times)):
            built += builder.on_tick(int(times[i]), int(bid[i]), int(ask[i] - bid[i]))
        if builder.forming is not None:
            built.append(builder.forming)  # closed when the clock passes its end
        return SymbolData(symbol, kind, digits, None, ticks, to_bars(symbol, Timeframe.M1, digits, built), times)
    names = {r[5] or "M1" for r in rows}
    if len(names) > 1:
        raise BadInput(f"{where}: {symbol} has bars of more than one timeframe ({', '.join(sorted(names))})")
    try:
        tf = Timeframe.parse(names.pop())
    except Exception as exc:
        raise BadInput(f"{where}: {symbol}: {exc}") from None
    for line, t, _, _, _, _ in rows:
        if t % tf.ms:
            raise BadInput(f"{where} line {line}: {symbol} {tf.name} bar at {iso_utc(utc(t))} is not a {tf.name} open")
    cols = [np.array([points(r[2][k]) for r in rows], dtype=np.int64) for k in range(4)]
    volume = np.array([r[3] for r in rows], dtype=np.int64)
    spread = np.array([r[4] for r in rows], dtype=np.int64)
    bars = Bars.of_columns(symbol, tf, digits, [times, *cols, volume, spread])
    return SymbolData(symbol, kind, digits, tf, None, bars, times + tf.ms)


# -- the cursor --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    position: int  # events played
    data_ms: int  # the replay clock when it was saved


class CursorStore(Protocol):
    def load(self, feed: str) -> Cursor | None: ...
    def save(self, feed: str, path: str, cursor: Cursor) -> None: ...


class ReplaySource:
    """The `Source` protocol over a loaded file. `clock` is the wall clock (epoch ms)."""

    name = "replay"
    live = False  # every event is delivered, however far the pump is behind

    def __init__(
        self,
        data: ReplayData,
        *,
        speed: float | None = 1.0,
        clock: Callable[[], int] = wall_ms,
        store: CursorStore | None = None,
        batch: int = 1000,
        save_every_ms: int = 1000,
        symbols: tuple[str, ...] | None = None,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError("speed must be > 0 or None (max)")
        if symbols is not None:
            missing = [s for s in symbols if s not in data.symbols]
            if missing:
                raise UnknownSymbol(
                    f"replay file {data.path} has no {', '.join(missing)} (it has {', '.join(data.symbols)})"
                )
        self.data = data
        self.speed = speed
        self.batch = batch
        self.save_every_ms = save_every_ms
        self._clock = clock
        self._store = store
        self._symbols = list(symbols or data.symbols)
        self._agg: dict[tuple[str, Timeframe], Bars] = {}
        saved = store.load(data.digest) if store is not None else None
        first = int(data.release_ms[0])
        self._anchor_data = saved.data_ms if saved is not None else first
        self._anchor_wall = clock()
        self._position = self._count_at(self._anchor_data) if saved is not None else 0  # max speed only
        self._saved_at = self._anchor_wall
        self._saved: Cursor | None = saved
        if saved is not None:
            log.info("replay %s resumes at %s (%d events played)", data.path, utc(saved.data_ms), self._position)

    # -- the clock ---------------------------------------------------------------------------

    def _count_at(self, data_ms: int) -> int:
        return bisect.bisect_right(self.data.release_ms, data_ms)

    def now_ms(self) -> int:
        wall = self._clock()
        if self.speed is not None:
            return self._anchor_data + int((wall - self._anchor_wall) * self.speed)
        # max: the clock stands at the last event released, then runs with the wall clock
        # (so a feed at its end ages) but never reaches an event not yet released.
        now = self._anchor_data + (wall - self._anchor_wall)
        if self._position < len(self.data.release_ms):
            now = min(now, int(self.data.release_ms[self._position]) - 1)
        return now

    @property
    def position(self) -> int:
        if self.speed is not None:
            return self._count_at(self.now_ms())
        return self._position

    @property
    def finished(self) -> bool:
        return self.position >= len(self.data.release_ms)

    def advance(self) -> None:
        """Called by the feed's pump: at max speed, release the next batch; persist the
        cursor at most every `save_every_ms`."""
        if self.speed is None and self._position < len(self.data.release_ms):
            self._position = min(len(self.data.release_ms), self._position + self.batch)
            self._anchor_data = int(self.data.release_ms[self._position - 1])
            self._anchor_wall = self._clock()
        if self._clock() - self._saved_at >= self.save_every_ms:
            self.save()

    def save(self) -> None:
        if self._store is None:
            return
        cursor = Cursor(self.position, self.now_ms())
        if cursor == self._saved:
            return
        try:
            self._store.save(self.data.digest, str(self.data.path), cursor)
        except FeedUnavailable as exc:  # playing goes on; the next save retries
            log.warning("replay %s: cursor not saved: %s", self.data.path, exc)
            return
        self._saved, self._saved_at = cursor, self._clock()

    def close(self) -> None:
        self.save()

    # -- the Source protocol -----------------------------------------------------------------

    def symbols(self) -> list[str]:
        return list(self._symbols)

    def _data(self, symbol: str) -> SymbolData:
        if symbol not in self._symbols:
            raise UnknownSymbol(f"unknown symbol {symbol!r}: the replay has {', '.join(self._symbols)}")
        return self.data.symbols[symbol]

    def spec(self, symbol: str) -> MarketSpec:
        """A file has prices only: the digits are the file's, the rest the sim's figures for
        the same name; a name the sim does not know has no spec."""
        d = self._data(symbol)
        known = CATALOG.get(symbol)
        if known is None:
            raise UnknownSymbol(
                f"replay has no spec for {symbol}: a file gives prices only, and the sim knows no {symbol}"
            )
        point = Decimal(1).scaleb(-d.digits)
        return MarketSpec(
            symbol=symbol,
            digits=d.digits,
            point=point,
            contract_size=known.contract_size,
            tick_size=max(point, known.tick_size),
            tick_value=known.contract_size * max(point, known.tick_size),
            volume_min=known.volume_min,
            volume_max=known.volume_max,
            volume_step=known.volume_step,
            stops_level=known.stops_level,
            freeze_level=known.freeze_level,
            trade_mode=TradeMode.FULL,
            currency_profit=known.currency_profit,
        )

    def _visible(self, d: SymbolData, now: int) -> int:
        """How many of the symbol's events are out at `now`."""
        if self.speed is None:
            now = min(now, int(self.data.release_ms[self._position - 1]) if self._position else -(2**62))
        return bisect.bisect_right(d.release_ms, now)

    def tick(self, symbol: str) -> Tick:
        d = self._data(symbol)
        now = self.now_ms()
        n = self._visible(d, now)
        if n == 0:
            first = iso_utc(utc(int(d.release_ms[0])))
            raise FeedUnavailable(f"replay has no {symbol} tick yet (its first is at {first})")
        if d.ticks is not None:
            return d.ticks.tick(n - 1, age_ms=now - int(d.ticks.time_ms[n - 1]))
        # A bar file's tick is the last closed bar's close, at its close time.
        close, spread = int(d.bars.close[n - 1]), int(d.bars.spread[n - 1])
        at = int(d.release_ms[n - 1])
        return Tick(symbol, at, price(close, d.digits), price(close + spread, d.digits), None, now - at)

    def ticks(self, symbol: str, after_ms: int, until_ms: int, limit: int) -> Ticks:
        d = self._data(symbol)
        n = self._visible(d, min(until_ms, self.now_ms()))
        if d.ticks is None:
            lo = bisect.bisect_right(d.release_ms, after_ms)
            hi = min(n, lo + limit)
            t = d.release_ms[lo:hi]
            bid = d.bars.close[lo:hi]
            return Ticks(symbol, d.digits, t, bid, bid + d.bars.spread[lo:hi], np.full(hi - lo, -1, dtype=np.int64))
        lo = bisect.bisect_right(d.ticks.time_ms, after_ms)
        hi = min(n, lo + limit)
        s = slice(lo, max(lo, hi))
        return Ticks(symbol, d.digits, d.ticks.time_ms[s], d.ticks.bid[s], d.ticks.ask[s], d.ticks.last[s])

    def _series(self, d: SymbolData, timeframe: Timeframe) -> Bars:
        base = d.bars.timeframe
        if timeframe.value < base.value or timeframe.value % base.value:
            raise BadRequest(
                f"replay file has {base.name} bars for {d.symbol}: {timeframe.name} bars cannot be built from them"
            )
        key = (d.symbol, timeframe)
        got = self._agg.get(key)
        if got is None:
            got = aggregate(d.bars, timeframe)
            self._agg[key] = got
        return got

    def closed_bars(self, symbol: str, timeframe: Timeframe, count: int, after_ms: int | None = None) -> Bars:
        count = check_count(count)
        d = self._data(symbol)
        series = self._series(d, timeframe)
        now = self.now_ms()
        if self.speed is None and self._position == 0:
            return Bars.empty(symbol, timeframe, d.digits)
        # Closed: its end has passed on the replay clock (the next bar's first tick is
        # released no earlier than that end, so the two rules agree here).
        n = bisect.bisect_right(series.time_ms + timeframe.ms, now)
        start = max(0, n - count)
        if after_ms is not None:
            start = max(start, bisect.bisect_right(series.time_ms, after_ms))
        return series.slice(start, max(start, n), forming=False)

    def forming_bar(self, symbol: str, timeframe: Timeframe) -> Bars:
        d = self._data(symbol)
        now = self.now_ms()
        opened = timeframe.open_of(now)
        n = self._visible(d, now)
        if d.ticks is None:
            series = d.bars
            if timeframe is series.timeframe:
                return Bars.empty(symbol, timeframe, d.digits)  # a bar file has no bar before it is over
            lo = bisect.bisect_left(series.time_ms, opened)
            part = series.slice(lo, max(lo, n), forming=True)
        else:
            t = d.ticks
            lo = bisect.bisect_left(t.time_ms, opened)
            if n <= lo:
                return Bars.empty(symbol, timeframe, d.digits)
            bid = t.bid[lo:n]
            part = Bars(
                symbol,
                Timeframe.M1,
                d.digits,
                np.array([opened]),
                bid[:1],
                np.array([bid.max()]),
                np.array([bid.min()]),
                bid[-1:],
                np.array([n - lo]),
                np.array([(t.ask[lo:n] - bid).min()]),
                forming=True,
            )
        if not len(part):
            return Bars.empty(symbol, timeframe, d.digits)
        bar = aggregate(part, timeframe)
        return bar.slice(0, 1, forming=True).aged(now, now - int(d.release_ms[n - 1]))
