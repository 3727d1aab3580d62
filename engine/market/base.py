"""The market data interface every source implements, and the types it speaks.

Prices travel as integer *points* (price = points x 10**-digits) inside arrays, so a bar
series is a handful of numpy int64 columns, exact and cheap; every price that leaves
through an accessor is a `Decimal`. Times are UTC epoch milliseconds inside, `datetime`
(UTC) outside; a bar's time is its open.

Staleness is data: a `Tick` and a `Bars` reading carry their age, and the `Market` facade
(engine/market/service.py) refuses a reading older than the age its caller accepts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

import numpy as np
import numpy.typing as npt

Int64s = npt.NDArray[np.int64]

# A symbol as a signal, a plan or a venue names it: ASCII letters, digits and . _ - + # (a
# broker's spelling with a suffix: GER40+, XAUUSD.m, US30.cash), matched before upper-casing so
# a non-ASCII name cannot turn into a different valid-looking one ("ß".upper() is "SS").
SYMBOL_RE = re.compile(r"[A-Za-z0-9._+#-]{1,32}", re.ASCII)
SYMBOL_RULE = "1..32 characters of A-Z 0-9 . _ - + #"


def symbol_name(value: object) -> str | None:
    """`value` as a symbol (stripped, upper-cased), or None when it is not one."""
    if not isinstance(value, str):
        return None
    stripped = value.strip()
    return stripped.upper() if SYMBOL_RE.fullmatch(stripped) else None


MIN_BARS = 1
MAX_BARS = 100_000  # MetaTrader 5's default "max bars in chart"; past it a request is a mistake


class MarketDataError(Exception):
    """A request the market data cannot answer. The message is one line naming what is wrong."""


class UnknownSymbol(MarketDataError):
    """The source has no such symbol."""


class UnknownTimeframe(MarketDataError):
    """No such timeframe (only M1, M5, M15, M30, H1, H4, D1 exist)."""


class BadRequest(MarketDataError):
    """An argument out of range (a count of 0 or 1,000,000, a negative age)."""


class BadInput(MarketDataError):
    """A replay file (or another input) that cannot be used as it is; nothing was loaded."""


class FeedUnavailable(MarketDataError):
    """The source could not be read (terminal gone, call timed out, database down)."""


class StaleData(MarketDataError):
    """The freshest reading there is is older than the caller accepts; it is not served."""

    def __init__(self, what: str, age_ms: int, max_age_ms: int) -> None:
        super().__init__(f"{what} is {age_ms / 1000:.3f} s old, older than the {max_age_ms / 1000:.3f} s accepted")
        self.age_ms = age_ms
        self.max_age_ms = max_age_ms


class Timeframe(enum.Enum):
    """The bar periods there are; the value is the period in seconds."""

    M1 = 60
    M5 = 300
    M15 = 900
    M30 = 1800
    H1 = 3600
    H4 = 14400
    D1 = 86400

    @property
    def ms(self) -> int:
        return self.value * 1000

    def open_of(self, time_ms: int) -> int:
        """The open of the bar holding `time_ms`. Every period divides a day, and days are
        UTC days since the epoch, so plain integer division aligns D1 to 00:00 UTC and H4
        to 00, 04, ... 20 UTC."""
        return time_ms - time_ms % self.ms

    @classmethod
    def parse(cls, value: Timeframe | str) -> Timeframe:
        if isinstance(value, Timeframe):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            names = ", ".join(t.name for t in cls)
            raise UnknownTimeframe(f"timeframe {value!r} does not exist (there are {names})") from None


def utc(time_ms: int) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000, UTC)


def epoch_ms(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError(f"{at!r} has no timezone: times are UTC and must say so")
    return int(at.timestamp() * 1000)


def price(points: int, digits: int) -> Decimal:
    """Exact: an integer scaled by a power of ten."""
    return Decimal(int(points)).scaleb(-digits)


def check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise BadRequest(f"count must be an integer {MIN_BARS}..{MAX_BARS} (got {count!r})")
    if not MIN_BARS <= count <= MAX_BARS:
        raise BadRequest(f"count must be {MIN_BARS}..{MAX_BARS} bars (got {count:,})")
    return int(count)


class TradeMode(enum.IntEnum):
    """SYMBOL_TRADE_MODE_* as MetaTrader 5 numbers them."""

    DISABLED = 0
    LONG_ONLY = 1
    SHORT_ONLY = 2
    CLOSE_ONLY = 3
    FULL = 4


@dataclass(frozen=True)
class MarketSpec:
    """What the venue says about a symbol. Levels are in points, money in the account currency."""

    symbol: str
    digits: int
    point: Decimal
    contract_size: Decimal
    tick_size: Decimal
    tick_value: Decimal  # account currency per lot per tick_size, for a losing position
    volume_min: Decimal
    volume_max: Decimal
    volume_step: Decimal
    stops_level: int  # a stop or limit must be at least this many points from the price
    freeze_level: int  # an order this close to its trigger cannot be modified
    trade_mode: TradeMode
    currency_profit: str = "USD"

    def __post_init__(self) -> None:
        for name in ("point", "contract_size", "tick_size", "tick_value", "volume_min", "volume_max", "volume_step"):
            value = getattr(self, name)
            if type(value) is not Decimal or not value.is_finite() or value <= 0:
                raise ValueError(f"{self.symbol} spec: {name} must be a positive Decimal (got {value!r})")
        if self.volume_max < self.volume_min:
            raise ValueError(f"{self.symbol} spec: volume_max {self.volume_max} < volume_min {self.volume_min}")
        if self.stops_level < 0 or self.freeze_level < 0:
            raise ValueError(f"{self.symbol} spec: stops and freeze levels must be >= 0")


@dataclass(frozen=True)
class Tick:
    """One quote. `age_ms` is how old it was when it was read, on the source's clock."""

    symbol: str
    time_ms: int
    bid: Decimal
    ask: Decimal
    last: Decimal | None  # the last trade's price; None where the venue quotes only (FX CFDs)
    age_ms: int

    @property
    def time(self) -> datetime:
        return utc(self.time_ms)

    @property
    def age(self) -> timedelta:
        return timedelta(milliseconds=self.age_ms)


@dataclass(frozen=True)
class Ticks:
    """A run of ticks of one symbol as columns (points), oldest first. `last` is -1 where
    there is none."""

    symbol: str
    digits: int
    time_ms: Int64s
    bid: Int64s
    ask: Int64s
    last: Int64s

    def __len__(self) -> int:
        return len(self.time_ms)

    def tick(self, i: int, age_ms: int = 0) -> Tick:
        last = int(self.last[i])
        return Tick(
            symbol=self.symbol,
            time_ms=int(self.time_ms[i]),
            bid=price(self.bid[i], self.digits),
            ask=price(self.ask[i], self.digits),
            last=price(last, self.digits) if last >= 0 else None,
            age_ms=age_ms,
        )

    @classmethod
    def empty(cls, symbol: str, digits: int) -> Ticks:
        z = np.zeros(0, dtype=np.int64)
        return cls(symbol, digits, z, z, z, z)


BAR_COLUMNS = ("time_ms", "open", "high", "low", "close", "tick_volume", "spread")


@dataclass(frozen=True)
class Bars:
    """Bars of one symbol and timeframe as columns, oldest first: bar open times (epoch ms)
    and bid OHLC in points, tick volume, spread in points. When `forming` is True the last
    row is the bar still forming (its close is the latest price); every other row is closed
    and never changes. `as_of_ms` is the source time of the reading, `age_ms` how old the
    newest data in it was then (0 when the closed bars were complete and the forming bar
    current)."""

    symbol: str
    timeframe: Timeframe
    digits: int
    time_ms: Int64s
    open: Int64s
    high: Int64s
    low: Int64s
    close: Int64s
    tick_volume: Int64s
    spread: Int64s
    forming: bool = False
    as_of_ms: int = 0
    age_ms: int = 0
    _decimals: dict[str, tuple[Decimal, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.time_ms)
        for name in BAR_COLUMNS:
            column = getattr(self, name)
            if len(column) != n:
                raise ValueError(f"Bars column {name} has {len(column)} rows, time has {n}")

    def __len__(self) -> int:
        return len(self.time_ms)

    @property
    def closed_count(self) -> int:
        return len(self) - (1 if self.forming else 0)

    @property
    def age(self) -> timedelta:
        return timedelta(milliseconds=self.age_ms)

    def times(self) -> list[datetime]:
        return [utc(int(t)) for t in self.time_ms]

    def prices(self, column: str) -> tuple[Decimal, ...]:
        """A price column (open, high, low, close) as Decimals, computed once per reading."""
        if column not in ("open", "high", "low", "close"):
            raise ValueError(f"{column!r} is not a price column (open, high, low, close)")
        cached = self._decimals.get(column)
        if cached is None:
            scale = -self.digits
            cached = tuple(Decimal(p).scaleb(scale) for p in getattr(self, column).tolist())
            self._decimals[column] = cached
        return cached

    def closed(self) -> Bars:
        """Only the closed bars (what a causal rule reads)."""
        if not self.forming:
            return self
        return self.slice(0, len(self) - 1, forming=False)

    def tail(self, count: int) -> Bars:
        start = max(0, len(self) - count)
        return self.slice(start, len(self), forming=self.forming)

    @classmethod
    def of_columns(
        cls,
        symbol: str,
        timeframe: Timeframe,
        digits: int,
        columns: Sequence[Int64s],
        *,
        forming: bool = False,
        as_of_ms: int = 0,
        age_ms: int = 0,
    ) -> Bars:
        """Bars from the columns in BAR_COLUMNS order."""
        if len(columns) != len(BAR_COLUMNS):
            raise ValueError(f"Bars take {len(BAR_COLUMNS)} columns {BAR_COLUMNS}, got {len(columns)}")
        time_ms, open_, high, low, close, tick_volume, spread = columns
        return cls(
            symbol,
            timeframe,
            digits,
            time_ms,
            open_,
            high,
            low,
            close,
            tick_volume,
            spread,
            forming=forming,
            as_of_ms=as_of_ms,
            age_ms=age_ms,
        )

    def columns(self) -> list[Int64s]:
        return [getattr(self, c) for c in BAR_COLUMNS]

    def slice(self, start: int, stop: int, *, forming: bool) -> Bars:
        return Bars.of_columns(
            self.symbol,
            self.timeframe,
            self.digits,
            [c[start:stop] for c in self.columns()],
            forming=forming and stop == len(self) and stop > start,
            as_of_ms=self.as_of_ms,
            age_ms=self.age_ms,
        )

    def aged(self, as_of_ms: int, age_ms: int) -> Bars:
        return Bars.of_columns(
            self.symbol,
            self.timeframe,
            self.digits,
            self.columns(),
            forming=self.forming,
            as_of_ms=as_of_ms,
            age_ms=age_ms,
        )

    @classmethod
    def empty(cls, symbol: str, timeframe: Timeframe, digits: int) -> Bars:
        z = np.zeros(0, dtype=np.int64)
        return cls(symbol, timeframe, digits, z, z, z, z, z, z, z)

    @classmethod
    def concat(cls, parts: Sequence[Bars], *, forming: bool = False) -> Bars:
        first = parts[0]
        merged = [np.concatenate([p.columns()[i] for p in parts]) for i in range(len(BAR_COLUMNS))]
        return cls.of_columns(first.symbol, first.timeframe, first.digits, merged, forming=forming)


class Source(Protocol):
    """What a source gives (sim, replay, mt5). Every call may raise FeedUnavailable;
    UnknownSymbol for a symbol it does not have. Nothing here applies an age policy: that
    is the facade's job, so each source only says how old its data is."""

    name: str

    def now_ms(self) -> int:
        """The source's clock (a replay's is its data time), epoch ms UTC."""
        ...

    def symbols(self) -> list[str]: ...

    def spec(self, symbol: str) -> MarketSpec: ...

    def tick(self, symbol: str) -> Tick:
        """The latest tick at the source's now, with its age on the source's clock."""
        ...

    def ticks(self, symbol: str, after_ms: int, until_ms: int, limit: int) -> Ticks:
        """Ticks with after_ms < time <= until_ms, oldest first, at most `limit`."""
        ...

    def closed_bars(self, symbol: str, timeframe: Timeframe, count: int, after_ms: int | None = None) -> Bars:
        """Up to `count` bars closed at the source's now, oldest first; with `after_ms`,
        only bars opened after it (the cache asks for what is new since its last close)."""
        ...

    def forming_bar(self, symbol: str, timeframe: Timeframe) -> Bars:
        """The bar forming now (one row, forming=True), or no row when it has no tick yet."""
        ...


TickHandler = Callable[[Tick], None]
BarHandler = Callable[[Bars], None]  # one closed bar (one row)
