"""A position's management rules (the `manage` block) and the stop they ask for.

Pure: no database, no venue, no clock. `decide` is a function of the position, its rules,
the state carried from the last decision and the latest price, so a new leader that loads
the stored state resumes exactly where the old one stopped.

R is the initial risk distance, |entry - initial stop|; a position is at +1 R when the
price has moved that distance in its favour. Prices are Decimal throughout.

(Interface fixed first so the manager and the rules can be built side by side: the
bodies marked NotImplementedError are the rules work's to fill.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from engine.market.base import Timeframe
from engine.model import Side


class RulesError(ValueError):
    """A bad `manage` block: one message per bad field, `manage.trailing.activation_rr: ...`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Breakeven:
    at_rr: Decimal  # move the stop to entry (+ offset) once the position is at +at_rr R
    offset_points: Decimal = Decimal(0)  # beyond entry in the position's favour, in points


@dataclass(frozen=True)
class Trailing:
    """Exactly one of distance_points, atr_multiple (with atr_timeframe/atr_period) or swing."""

    activation_rr: Decimal
    distance_points: Decimal | None = None
    atr_multiple: Decimal | None = None
    atr_timeframe: Timeframe | None = None
    atr_period: int = 14
    swing_timeframe: Timeframe | None = None  # trail behind the last confirmed swing low/high
    swing_bars: int = 2  # bars each side that confirm a swing


@dataclass(frozen=True)
class Lock:
    at_rr: Decimal  # once at +at_rr R ...
    lock_rr: Decimal  # ... the stop locks +lock_rr R (lock_rr < at_rr)


@dataclass(frozen=True)
class Partial:
    at_rr: Decimal
    fraction: Decimal  # of the volume, 0 < fraction < 1, rounded down to the volume step


@dataclass(frozen=True)
class ManageRules:
    breakeven: Breakeven | None = None
    trailing: Trailing | None = None
    locks: tuple[Lock, ...] = ()  # ascending at_rr
    partial: Partial | None = None

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def empty(self) -> bool:
        return self.breakeven is None and self.trailing is None and not self.locks and self.partial is None


def parse_manage(obj: Any, path: str = "manage") -> ManageRules:
    """The rules of a `manage` JSON object, e.g. {"breakeven": {"at_rr": 1}, "trailing":
    {"distance_points": 150, "activation_rr": 1.5}, "lock": [[2, 1], [3, 2]]}. Numbers may be
    JSON numbers or strings and become Decimal. Raises RulesError naming every bad field;
    an unknown key is refused, never ignored."""
    raise NotImplementedError


@dataclass(frozen=True)
class Held:
    """A managed position as the rules see it."""

    ticket: str
    symbol: str
    side: Side
    entry: Decimal
    initial_sl: Decimal  # defines R; never changes after the fill
    volume: Decimal
    point: Decimal  # the symbol's point, for *_points settings


@dataclass(frozen=True)
class TrailState:
    """What survives a failover (stored in plan_execution_state.state, with the columns
    trailing_mode_enabled, current_rr and high_water mirrored from it)."""

    high_water: Decimal | None = None  # best price since the fill (bid for a buy, ask for a sell)
    current_rr: Decimal = Decimal(0)
    trailing_active: bool = False
    breakeven_done: bool = False
    locks_done: int = 0  # how many lock steps have been applied
    partial_done: bool = False

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TrailState:
        raise NotImplementedError


@dataclass(frozen=True)
class Decision:
    stop: Decimal  # the stop the position should have: never looser than the current one
    state: TrailState
    why: tuple[str, ...] = ()  # "breakeven", "lock 2R->1R", "trailing 150 points", ...
    partial_volume: Decimal | None = None  # close this much now (a partial at its target)


def decide(
    held: Held,
    rules: ManageRules,
    state: TrailState,
    price: Decimal,  # the price the position would close at now: bid for a buy, ask for a sell
    current_sl: Decimal,
    atr: Decimal | None = None,  # the ATR of rules.trailing's timeframe and period, closed bars
    swing: Decimal | None = None,  # the last confirmed swing low (buy) or high (sell)
) -> Decision:
    """The stop the rules ask for at `price`, and the new state. Tighten-only: the stop
    returned is current_sl or better for the position."""
    raise NotImplementedError
