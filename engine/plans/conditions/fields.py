"""What the family modules share: reading a condition's parameters (every bad one named,
an unknown one refused), reading closed bars with their age, and a condition's JSON form.

A parameter is read once with its default; `Fields.done()` then raises one ConditionError
listing every bad field and every parameter nobody read (an unknown parameter is refused,
never ignored)."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

import numpy as np

from engine.market.base import SYMBOL_RULE, Bars, MarketDataError, Timeframe, symbol_name
from engine.plans.conditions.base import PARSERS, Condition, ConditionError, Reading, Snapshot

# Bars one condition may read: past it a plan is a mistake, not a pattern, and the caches
# keyed by bars stay small (at most 32 bytes a bar per entry).
MAX_LOOKBACK = 1000
MAX_AGE_LIMIT_MS = 7 * 86_400_000  # a week: a D1 condition over a long weekend, with room
# Plain decimals only: Decimal() alone also takes "NaN", "1_000" and non-ASCII digits.
NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)

E = TypeVar("E", bound=enum.Enum)


class Direction(enum.Enum):
    """Which way a break, a block or a move goes."""

    UP = "up"
    DOWN = "down"


class Fields:
    """The parameters of one condition's JSON object at `path`."""

    def __init__(self, obj: Mapping[str, Any], path: str) -> None:
        self.obj = obj
        self.path = path
        self.errors: list[str] = []
        self.read: set[str] = {"type"}

    def _take(self, name: str) -> Any:
        self.read.add(name)
        return self.obj.get(name)

    def bad(self, name: str, why: str) -> None:
        self.errors.append(f"{self.path}.{name}: {why}")

    def symbol(self) -> str:
        """As a signal's symbol (engine/signal.py): matched before upper-casing, so a
        non-ASCII name cannot turn into a different valid-looking one."""
        value = self._take("symbol")
        name = symbol_name(value)
        if name is None:
            self.bad("symbol", f"{SYMBOL_RULE} are required, got {value!r}")
            return ""
        return name

    def timeframe(self) -> Timeframe:
        value = self._take("timeframe")
        if isinstance(value, str):
            try:
                return Timeframe.parse(value)
            except MarketDataError:
                pass
        names = ", ".join(t.name for t in Timeframe)
        self.bad("timeframe", f"a timeframe ({names}) is required, got {value!r}")
        return Timeframe.M1

    def timeframes(self, name: str, low: int, high: int) -> tuple[Timeframe, ...]:
        value = self._take(name)
        names = ", ".join(t.name for t in Timeframe)
        if not isinstance(value, list) or not low <= len(value) <= high:
            self.bad(name, f"a list of {low}..{high} different timeframes ({names}) is required")
            return ()
        out: list[Timeframe] = []
        for item in value:
            try:
                out.append(Timeframe.parse(str(item)))
            except MarketDataError:
                self.bad(name, f"{item!r} is not a timeframe ({names})")
        if len(set(out)) != len(out):
            self.bad(name, "each timeframe once")
        return tuple(out)

    def integer(self, name: str, default: int | None, low: int, high: int) -> int:
        value = self._take(name)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad(name, f"an integer {low}..{high} is required, got {value!r}")
            return default if default is not None else low
        return value

    def decimal(
        self,
        name: str,
        default: Decimal | None = None,
        *,
        low: Decimal | None = None,
        high: Decimal | None = None,
        optional: bool = False,
    ) -> Decimal | None:
        """A number given as a string or an integer (never a float: "0.3", not 0.3)."""
        value = self._take(name)
        if value is None:
            if default is None and not optional:
                self.bad(name, "a number is required")
            return default
        plain = isinstance(value, int) and not isinstance(value, bool)
        if not plain and not (isinstance(value, str) and NUMBER_RE.fullmatch(value.strip())):
            self.bad(name, f"a decimal number as a string is required, got {value!r}")
            return default
        number = Decimal(value.strip() if isinstance(value, str) else value)
        if (low is not None and number < low) or (high is not None and number > high):
            self.bad(
                name, f"must be within {low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            )
        return number

    def choice(self, name: str, kind: type[E], default: E | None = None) -> E:
        value = self._take(name)
        if value is None and default is not None:
            return default
        try:
            return kind(value)
        except ValueError:
            options = ", ".join(str(k.value) for k in kind)
            self.bad(name, f"one of {options} is required, got {value!r}")
            return next(iter(kind))

    def strings(self, name: str, default: Sequence[str] | None, *, upper: bool = True) -> tuple[str, ...]:
        value = self._take(name)
        if value is None and default is not None:
            return tuple(default)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            self.bad(name, "a non-empty list of strings is required")
            return ()
        return tuple(v.strip().upper() if upper else v.strip().lower() for v in value)

    def max_age_ms(self, default: int) -> int:
        return self.integer("max_age_ms", default, 1, MAX_AGE_LIMIT_MS)

    def on_timeframes(self, name: str, timeframes: Sequence[Timeframe]) -> list[Condition]:
        """An inner condition parsed once per timeframe (the wrapper sets its `timeframe`)."""
        value = self._take(name)
        inner = f"{self.path}.{name}"
        if not isinstance(value, Mapping):
            self.bad(name, "a condition object is required")
            return []
        parse = PARSERS.get(str(value.get("type")))
        if parse is None:
            self.errors.append(f"{inner}.type: unknown condition type {value.get('type')!r}")
            return []
        if "timeframe" in value:
            self.errors.append(f"{inner}.timeframe: set by the wrapping condition's timeframes, not here")
            return []
        try:
            return [parse({**value, "timeframe": tf.name}, inner) for tf in timeframes]
        except ConditionError as e:
            no_timeframe = f"{inner}.timeframe: unknown parameter"
            for error in e.errors:
                if error == no_timeframe:
                    error = f"{inner}: {value['type']} takes no timeframe; a condition on bars is required"
                self.errors.append(error)
            return []

    def exactly_one(self, *names: str) -> None:
        given = [n for n in names if self.obj.get(n) is not None]
        if len(given) != 1:
            self.errors.append(f"{self.path}: exactly one of {', '.join(names)} is required")

    def done(self) -> None:
        unknown = sorted(set(self.obj) - self.read)
        for name in unknown:
            self.bad(name, "unknown parameter")
        if self.errors:
            raise ConditionError(self.errors)


class OnBars:
    """A condition on one (symbol, timeframe)'s closed bars: what it needs, and its JSON."""

    type: ClassVar[str]
    symbol: str
    timeframe: Timeframe

    def needs(self) -> list[tuple[str, Timeframe | None]]:
        return [(self.symbol, self.timeframe)]

    def to_json(self) -> dict[str, object]:
        return as_json(self.type, self)


def as_json(type_name: str, condition: object) -> dict[str, Any]:
    """A dataclass condition's parameters as plan JSON (Decimals as strings), with `type`;
    fields whose name starts with `_` are state, not parameters."""
    out: dict[str, Any] = {"type": type_name}
    for f in dataclasses.fields(condition):  # type: ignore[arg-type]
        if f.name.startswith("_"):
            continue
        value = getattr(condition, f.name)
        if value is not None:
            out[f.name] = to_jsonable(value)
    return out


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Timeframe):
        return value.name
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_jsonable(v) for v in value]
    return value


def parser(build: Callable[[Fields], Condition]) -> Callable[[Mapping[str, Any], str], Condition]:
    """A registry parser from a function that reads every parameter from Fields."""

    def parse(obj: Mapping[str, Any], path: str) -> Condition:
        if not isinstance(obj, Mapping):
            raise ConditionError([f"{path}: a condition object is required"])
        fields = Fields(obj, path)
        condition = build(fields)
        fields.done()
        return condition

    return parse


class Unavailable(Exception):
    """The data a condition needs is missing or too old: the reading is UNKNOWN."""

    def __init__(self, detail: str, age_ms: int | None = None) -> None:
        super().__init__(detail)
        self.reading = Reading.unknown(detail, age_ms)


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def bar_age_ms(now_ms: int, bars: Bars) -> int:
    """How old the newest closed bar is: since its close, or what the source says if older."""
    if len(bars) == 0:
        return 0
    since_close = now_ms - (int(bars.time_ms[-1]) + bars.timeframe.ms)
    return max(0, since_close, bars.age_ms)


def default_max_age_ms(timeframe: Timeframe) -> int:
    """Two periods: a live feed's newest closed bar is at most one period old, plus slack."""
    return 2 * timeframe.ms


def closed_bars(snapshot: Snapshot, symbol: str, timeframe: Timeframe, count: int, max_age_ms: int) -> Bars:
    """Exactly `count` closed bars, fresh enough, or Unavailable (never fewer, never a guess)."""
    what = f"{symbol} {timeframe.name}"
    try:
        bars = snapshot.bars(symbol, timeframe, count).closed()
    except MarketDataError as e:
        raise Unavailable(f"{what}: {one_line(e)}") from None
    if len(bars) < count:
        raise Unavailable(f"{what}: {len(bars)} closed bars, {count} needed")
    bars = bars.tail(count)
    age = bar_age_ms(snapshot.now_ms, bars)
    if age > max_age_ms:
        raise Unavailable(f"{what}: newest closed bar {age / 1000:.0f} s old, over max_age_ms {max_age_ms}", age)
    return bars


def evaluating(evaluate: Callable[[Any, Snapshot], Reading]) -> Callable[[Any, Snapshot], Reading]:
    """Unavailable data inside `evaluate` is an UNKNOWN reading, never an exception."""

    def run(self: Any, snapshot: Snapshot) -> Reading:
        try:
            return evaluate(self, snapshot)
        except Unavailable as e:
            return e.reading

    return run


INDICATOR_CACHE = 256  # series kept per indicator, keyed by their bars' prices: at most 8 MB


def column_bytes(bars: Bars, *names: str) -> tuple[bytes, ...]:
    """Columns as bytes: a cache key that is the data itself, so every plan reading the same
    bars shares one computation, and bars with the same times but other prices never do."""
    return tuple(getattr(bars, name).astype(np.int64, copy=False).tobytes() for name in names)


def points(column: bytes) -> list[int]:
    return np.frombuffer(column, dtype=np.int64).tolist()


def prices(column: bytes, digits: int) -> list[Decimal]:
    return [Decimal(p).scaleb(-digits) for p in points(column)]


def dec(x: float, places: int = 6) -> Decimal:
    """An indicator library's float, back to Decimal at the boundary (rounded, so the text
    a user reads and the comparisons are stable)."""
    return Decimal(repr(x)).quantize(Decimal(1).scaleb(-places))
