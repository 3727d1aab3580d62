"""What every condition is: parsed from its JSON, told what data it reads, evaluated on a
snapshot to TRUE, FALSE or UNKNOWN with the reason a user reads in `plan explain`.

The contract between the evaluator and the families:
- `parse` turns a condition's JSON object into a `Condition`, or raises `ConditionError`
  naming every bad field (an unknown parameter is refused, never ignored).
- `needs()` lists the (symbol, timeframe) pairs the condition reads (timeframe None: ticks),
  which is the evaluator's index: a bar close of (symbol, timeframe) re-evaluates only the
  plans whose conditions need it.
- `evaluate(snapshot)` reads closed bars and ticks through the snapshot only, and is causal:
  its answer on the bars up to T never changes when later bars arrive.
- Data missing or older than the condition's `max_age_ms` is UNKNOWN, never a guess.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from engine.market.base import Bars, Tick, Timeframe


class Truth(enum.Enum):
    TRUE = "true"
    FALSE = "false"
    UNKNOWN = "unknown"  # data missing, stale, or the source cannot say (no order book)


@dataclass(frozen=True)
class Pattern:
    """A pattern confirmed on closed bars, recorded once in pattern_history."""

    symbol: str
    timeframe: Timeframe
    kind: str  # bos_up, choch_down, fvg_up, order_block_up, ...
    bar_ms: int  # the open time of the bar the pattern belongs to
    confirmed_ms: int  # the close of the bar that confirmed it
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reading:
    """One condition's answer and why: what was measured, against what, on data how old."""

    truth: Truth
    detail: str  # one line a user reads: "DXY 1h change -0.35 % <= -0.3 %"
    value: str | None = None  # the measured value (a Decimal as text), where there is one
    threshold: str | None = None
    age_ms: int | None = None  # age of the oldest data read
    patterns: tuple[Pattern, ...] = ()  # patterns confirmed by this evaluation

    @classmethod
    def unknown(cls, detail: str, age_ms: int | None = None) -> Reading:
        return cls(Truth.UNKNOWN, detail, age_ms=age_ms)


@dataclass(frozen=True)
class BookLevel:
    price: Any  # Decimal
    volume: Any  # Decimal
    side: str  # "bid" or "ask"


@dataclass(frozen=True)
class NewsEvent:
    at_ms: int
    currency: str
    impact: str  # "high", "medium", "low"
    title: str


class Snapshot(Protocol):
    """What a condition may read, at one evaluation instant. Every read raises
    engine.market.MarketDataError (missing, stale, unknown symbol) rather than guess."""

    now_ms: int

    def bars(self, symbol: str, timeframe: Timeframe, count: int) -> Bars:
        """Up to `count` closed bars, oldest first (never the forming bar)."""
        ...

    def tick(self, symbol: str) -> Tick: ...

    def book(self, symbol: str) -> list[BookLevel] | None:
        """The order book now, or None where the source has none (order flow is UNKNOWN)."""
        ...

    def news(self, from_ms: int, to_ms: int) -> list[NewsEvent]: ...


class ConditionError(ValueError):
    """A condition's JSON is bad: one message per bad field, `path: what is wrong`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class Condition(Protocol):
    type: ClassVar[str]
    guard: ClassVar[bool]  # a guard (news, order flow) fails closed: UNKNOWN counts as FALSE

    def needs(self) -> list[tuple[str, Timeframe | None]]: ...

    def evaluate(self, snapshot: Snapshot) -> Reading: ...

    def to_json(self) -> dict[str, Any]: ...


Parser = Callable[[Mapping[str, Any], str], Condition]  # (the JSON object, its path) -> Condition

# Every condition type there is, filled by the family modules when they are imported
# (conditions.registry imports them all). A type is added, never changed in meaning.
PARSERS: dict[str, Parser] = {}


def register(type_name: str) -> Callable[[Parser], Parser]:
    def add(parse: Parser) -> Parser:
        if type_name in PARSERS:
            raise RuntimeError(f"condition type {type_name!r} registered twice")
        PARSERS[type_name] = parse
        return parse

    return add
