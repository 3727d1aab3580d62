"""A position's management rules (the `manage` block) and the stop they ask for.

Pure: no database, no venue, no clock. `decide` is a function of the position, its rules,
the state carried from the last decision and the latest price, so a new leader that loads
the stored state resumes exactly where the old one stopped.

R is the initial risk distance, |entry - initial stop|; a position is at +1 R when the
price has moved that distance in its favour. Prices are Decimal throughout.

Every stop `decide` computes is a candidate; the stop it returns is the tightest of the
current stop and the candidates the price has not already crossed (a stop on the wrong side
of the price cannot be placed, so that candidate waits for a later tick). Once reached, a
rule's stop is asked for on every later decision, so a modification that failed is asked
for again rather than forgotten. A position whose initial stop is at entry (R = 0) stays
at 0 R: no R-based rule fires, and trailing only if it activates at 0 R.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal, InvalidOperation, localcontext
from typing import Any

from common.jsonshape import json_type
from common.numbers import ascii_decimal
from engine.market.base import Timeframe, UnknownTimeframe
from engine.model import Side

_ZERO = Decimal(0)
_ONE = Decimal(1)
# A fixed context for parsing and the canonical form: the ambient one is thread-local and
# anyone may change it, which must not change how a stored block reads back.
_CTX = Context(prec=40)
# Settings are ratios, points and fractions: twelve orders of magnitude either way covers
# every real one and keeps a canonical string short.
_MAX_ADJUSTED = 12
_MAX_NUMBER_CHARS = 100
MAX_ATR_PERIOD = 1000
MAX_SWING_BARS = 50

Errors = list[tuple[str, str]]  # (path, problem): "manage.lock[0][1]", "must be >= 0 (got -1)"


class RulesError(ValueError):
    """A bad `manage` block: one message per bad field, `manage.trailing.activation_rr: ...`."""

    def __init__(self, errors: list[str], fields: Errors | None = None) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors
        # The same as (path, problem) pairs, for a caller that keys its errors by field.
        self.fields: Errors = list(fields) if fields is not None else [_split(e) for e in errors]


def _split(error: str) -> tuple[str, str]:
    where, _, problem = error.partition(": ")
    return where, problem


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

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"activation_rr": _canon(self.activation_rr)}
        if self.distance_points is not None:
            out["distance_points"] = _canon(self.distance_points)
        elif self.atr_multiple is not None and self.atr_timeframe is not None:
            out["atr"] = {
                "timeframe": self.atr_timeframe.name,
                "period": str(self.atr_period),
                "multiple": _canon(self.atr_multiple),
            }
        elif self.swing_timeframe is not None:
            out["swing"] = {"timeframe": self.swing_timeframe.name, "bars": str(self.swing_bars)}
        return out

    @property
    def describe(self) -> str:
        if self.distance_points is not None:
            return f"trailing {_canon(self.distance_points)} points"
        if self.atr_multiple is not None and self.atr_timeframe is not None:
            return f"trailing {_canon(self.atr_multiple)} x ATR({self.atr_period}) {self.atr_timeframe.name}"
        timeframe = self.swing_timeframe.name if self.swing_timeframe is not None else "?"
        return f"trailing swing {timeframe}"


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
        """The canonical block: parse_manage reads it back to equal rules, and equal rules
        give the same JSON however they were spelled (1, "1.0", 1E0), so it can be hashed.
        Every leaf is a string, numbers included, as in a signal's canonical intent (JCS)."""
        out: dict[str, Any] = {}
        if self.breakeven is not None:
            out["breakeven"] = {
                "at_rr": _canon(self.breakeven.at_rr),
                "offset_points": _canon(self.breakeven.offset_points),
            }
        if self.trailing is not None:
            out["trailing"] = self.trailing.to_json()
        if self.locks:
            out["lock"] = [[_canon(lock.at_rr), _canon(lock.lock_rr)] for lock in self.locks]
        if self.partial is not None:
            out["partial"] = {"at_rr": _canon(self.partial.at_rr), "fraction": _canon(self.partial.fraction)}
        return out

    @property
    def empty(self) -> bool:
        return self.breakeven is None and self.trailing is None and not self.locks and self.partial is None


# --------------------------------------------------------------------------- parsing


class _Bad(ValueError):
    """One field's problem, collected by parse_manage instead of stopping at the first."""


def _canon(number: Decimal) -> str:
    """One spelling per value: no trailing zeros, no exponent ("1.50" and "15E-1" give "1.5")."""
    if number.is_zero():
        return "0"
    return format(number.normalize(_CTX), "f")


def _show(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decimal(value: object) -> Decimal:
    if isinstance(value, bool):  # an int subclass: true must not mean 1
        raise _Bad("must be a number, got a boolean")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        if abs(value) >= 10 ** (_MAX_ADJUSTED + 1):
            raise _Bad(f"must be below 1e{_MAX_ADJUSTED + 1}")
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad("must be a finite number")
        # The JSON text when the decoder kept it (engine.signal.loads does), else the
        # shortest decimal that reads back as this float: 0.1 stays 0.1.
        text = getattr(value, "text", None)
        number = Decimal(text if isinstance(text, str) else repr(value))
    elif isinstance(value, str):
        if len(value) > _MAX_NUMBER_CHARS:
            raise _Bad("must be a decimal number")
        try:
            number = ascii_decimal(value)
        except ValueError:
            raise _Bad(f"must be a decimal number (got {_show(value)})") from None
    else:
        raise _Bad(f"must be a number or decimal string, got {json_type(value)}")
    if not number.is_finite():
        raise _Bad("must be a finite number")
    if number.is_zero():
        return _ZERO
    if not -_MAX_ADJUSTED <= number.adjusted() <= _MAX_ADJUSTED:
        raise _Bad(f"must be between 1e-{_MAX_ADJUSTED} and 1e{_MAX_ADJUSTED + 1}")
    return Decimal(_canon(number))


def _positive(value: object) -> Decimal:
    number = _decimal(value)
    if number <= _ZERO:
        raise _Bad(f"must be > 0 (got {_canon(number)})")
    return number


def _non_negative(value: object) -> Decimal:
    number = _decimal(value)
    if number < _ZERO:
        raise _Bad(f"must be >= 0 (got {_canon(number)})")
    return number


def _fraction(value: object) -> Decimal:
    number = _decimal(value)
    if not _ZERO < number < _ONE:
        raise _Bad(f"must be between 0 and 1, both excluded (got {_canon(number)})")
    return number


def _whole(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        try:
            number = _decimal(value)
        except _Bad:
            raise _Bad(f"must be a whole number {low}..{high} (got {_show(value)})") from None
        if number != number.to_integral_value() or not low <= number <= high:
            raise _Bad(f"must be a whole number {low}..{high} (got {_canon(number)})")
        return int(number)

    return convert


def _timeframe(value: object) -> Timeframe:
    if not isinstance(value, str):
        raise _Bad(f"must be a timeframe name such as M15, got {json_type(value)}")
    try:
        return Timeframe.parse(value)
    except UnknownTimeframe as exc:
        raise _Bad(str(exc)) from None


class _Block:
    """One JSON object of the block: its fields read one by one, every problem collected."""

    def __init__(self, value: object, path: str, allowed: tuple[str, ...], errors: Errors) -> None:
        self.path = path
        self.errors = errors
        self.obj: Mapping[Any, Any] = {}
        self.ok = isinstance(value, Mapping)
        if not isinstance(value, Mapping):
            errors.append((path, f"must be an object, got {json_type(value)}"))
            return
        self.obj = value
        for key in value:
            if key not in allowed:
                label = key if isinstance(key, str) and key.isprintable() and len(key) <= 40 else _show(key)
                errors.append((f"{path}.{label}", f"unknown key (allowed: {', '.join(allowed)})"))

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def field(self, key: str, convert: Callable[[object], Any], *, required: bool = True, default: Any = None) -> Any:
        value = self.obj.get(key)
        if value is None:
            if required and self.ok:
                self.errors.append((f"{self.path}.{key}", "required"))
            return default
        try:
            return convert(value)
        except _Bad as exc:
            self.errors.append((f"{self.path}.{key}", str(exc)))
            return default


def parse_manage(obj: Any, path: str = "manage") -> ManageRules:
    """The rules of a `manage` JSON object, e.g. {"breakeven": {"at_rr": 1}, "trailing":
    {"distance_points": 150, "activation_rr": 1.5}, "lock": [[2, 1], [3, 2]]}. Numbers may be
    JSON numbers or strings and become Decimal. Raises RulesError naming every bad field;
    an unknown key is refused, never ignored."""
    errors: Errors = []
    top = _Block(obj, path, ("breakeven", "trailing", "lock", "partial"), errors)
    breakeven = _breakeven(top.obj["breakeven"], f"{path}.breakeven", errors) if top.has("breakeven") else None
    trailing = _trailing(top.obj["trailing"], f"{path}.trailing", errors) if top.has("trailing") else None
    locks = _locks(top.obj["lock"], f"{path}.lock", errors) if top.has("lock") else ()
    partial = _partial(top.obj["partial"], f"{path}.partial", errors) if top.has("partial") else None
    if errors:
        raise RulesError([f"{where}: {problem}" for where, problem in errors], errors)
    return ManageRules(breakeven=breakeven, trailing=trailing, locks=locks, partial=partial)


def _breakeven(value: object, path: str, errors: Errors) -> Breakeven | None:
    block = _Block(value, path, ("at_rr", "offset_points"), errors)
    at_rr = block.field("at_rr", _positive)
    offset = block.field("offset_points", _non_negative, required=False, default=_ZERO)
    return Breakeven(at_rr=at_rr, offset_points=offset) if at_rr is not None and offset is not None else None


def _trailing(value: object, path: str, errors: Errors) -> Trailing | None:
    modes = ("distance_points", "atr", "swing")
    block = _Block(value, path, ("activation_rr", *modes), errors)
    activation = block.field("activation_rr", _non_negative)
    given = [mode for mode in modes if block.has(mode)]
    if block.ok and len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        errors.append((path, f"give exactly one of distance_points, atr, swing{got}"))
    # Every mode given is read, so its own bad fields are named even beside another mode.
    distance = block.field("distance_points", _positive, required=False)
    atr = _atr(block.obj["atr"], f"{path}.atr", activation, errors) if block.has("atr") else None
    swing = _swing(block.obj["swing"], f"{path}.swing", activation, errors) if block.has("swing") else None
    if len(given) != 1 or activation is None:
        return None
    if distance is not None:
        return Trailing(activation_rr=activation, distance_points=distance)
    return atr or swing


def _atr(value: object, path: str, activation: Decimal | None, errors: Errors) -> Trailing | None:
    block = _Block(value, path, ("timeframe", "period", "multiple"), errors)
    timeframe = block.field("timeframe", _timeframe)
    period = block.field("period", _whole(1, MAX_ATR_PERIOD), required=False, default=14)
    multiple = block.field("multiple", _positive)
    if activation is None or timeframe is None or period is None or multiple is None:
        return None
    return Trailing(activation_rr=activation, atr_multiple=multiple, atr_timeframe=timeframe, atr_period=period)


def _swing(value: object, path: str, activation: Decimal | None, errors: Errors) -> Trailing | None:
    block = _Block(value, path, ("timeframe", "bars"), errors)
    timeframe = block.field("timeframe", _timeframe)
    bars = block.field("bars", _whole(1, MAX_SWING_BARS), required=False, default=2)
    if activation is None or timeframe is None or bars is None:
        return None
    return Trailing(activation_rr=activation, swing_timeframe=timeframe, swing_bars=bars)


def _locks(value: object, path: str, errors: Errors) -> tuple[Lock, ...]:
    if not isinstance(value, list | tuple):
        errors.append((path, f"must be an array of [at_rr, lock_rr] pairs, got {json_type(value)}"))
        return ()
    locks: list[Lock] = []
    previous: Decimal | None = None
    for index, pair in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            errors.append((where, f"must be an [at_rr, lock_rr] pair (got {_show(pair)})"))
            continue
        try:
            at_rr = _positive(pair[0])
        except _Bad as exc:
            errors.append((f"{where}[0]", str(exc)))
            at_rr = None
        try:
            lock_rr = _non_negative(pair[1])
        except _Bad as exc:
            errors.append((f"{where}[1]", str(exc)))
            lock_rr = None
        if at_rr is None or lock_rr is None:
            continue
        if lock_rr >= at_rr:
            errors.append((where, f"lock {_canon(lock_rr)} R must be below its at {_canon(at_rr)} R"))
        if previous is not None and at_rr <= previous:
            errors.append((where, f"at {_canon(at_rr)} R must be above the previous step's {_canon(previous)} R"))
        previous = at_rr if previous is None else max(previous, at_rr)
        locks.append(Lock(at_rr=at_rr, lock_rr=lock_rr))
    return tuple(locks)


def _partial(value: object, path: str, errors: Errors) -> Partial | None:
    block = _Block(value, path, ("at_rr", "fraction"), errors)
    at_rr = block.field("at_rr", _positive)
    fraction = block.field("fraction", _fraction)
    return Partial(at_rr=at_rr, fraction=fraction) if at_rr is not None and fraction is not None else None


# --------------------------------------------------------------------------- deciding


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
    volume_step: Decimal = Decimal("0.01")  # a partial close is a multiple of it ...
    volume_min: Decimal = Decimal("0.01")  # ... and leaves at least this open

    @property
    def risk(self) -> Decimal:
        """R: the initial stop's distance from entry."""
        return abs(self.entry - self.initial_sl)


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
        """Decimals as their exact strings, so from_json gives back an equal state (a resumed
        leader must compute the very stops the old one would have)."""
        return {
            "high_water": None if self.high_water is None else str(self.high_water),
            "current_rr": str(self.current_rr),
            "trailing_active": self.trailing_active,
            "breakeven_done": self.breakeven_done,
            "locks_done": self.locks_done,
            "partial_done": self.partial_done,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TrailState:
        """A stored state; a missing key takes its default (a state stored before the key
        existed still loads). ValueError names a value that to_json cannot have written."""

        def decimal(key: str) -> Decimal | None:
            raw = obj.get(key)
            if raw is None:
                return None
            try:
                number = Decimal(raw) if isinstance(raw, str) else None
            except InvalidOperation:
                number = None
            if number is None or not number.is_finite():
                raise ValueError(f"trail state {key}: not a decimal string ({_show(raw)})")
            return number

        def flag(key: str) -> bool:
            raw = obj.get(key, False)
            if not isinstance(raw, bool):
                raise ValueError(f"trail state {key}: not a boolean ({_show(raw)})")
            return raw

        locks_done = obj.get("locks_done", 0)
        if isinstance(locks_done, bool) or not isinstance(locks_done, int) or locks_done < 0:
            raise ValueError(f"trail state locks_done: not a count ({_show(locks_done)})")
        current_rr = decimal("current_rr")
        return cls(
            high_water=decimal("high_water"),
            current_rr=_ZERO if current_rr is None else current_rr,
            trailing_active=flag("trailing_active"),
            breakeven_done=flag("breakeven_done"),
            locks_done=locks_done,
            partial_done=flag("partial_done"),
        )


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
    # In the fixed context: two leaders must compute the same stops whatever their threads'
    # contexts say.
    with localcontext(_CTX):
        return _decide(held, rules, state, price, current_sl, atr, swing)


def _decide(
    held: Held,
    rules: ManageRules,
    state: TrailState,
    price: Decimal,
    current_sl: Decimal,
    atr: Decimal | None,
    swing: Decimal | None,
) -> Decision:
    buy = held.side is Side.BUY
    sign = _ONE if buy else -_ONE
    risk = held.risk
    current_rr = (price - held.entry) * sign / risk if risk > _ZERO else _ZERO
    if state.high_water is None:
        high_water = price
    else:
        high_water = max(price, state.high_water) if buy else min(price, state.high_water)

    candidates: list[tuple[Decimal, str]] = []
    breakeven_done = state.breakeven_done
    if rules.breakeven is not None:
        breakeven_done = breakeven_done or current_rr >= rules.breakeven.at_rr
        if breakeven_done:
            candidates.append((held.entry + sign * rules.breakeven.offset_points * held.point, "breakeven"))

    reached = sum(1 for lock in rules.locks if current_rr >= lock.at_rr)
    locks_done = min(max(state.locks_done, reached), len(rules.locks))
    for lock in rules.locks[:locks_done]:
        candidates.append(
            (held.entry + sign * lock.lock_rr * risk, f"lock {_canon(lock.at_rr)}R->{_canon(lock.lock_rr)}R")
        )

    trailing = rules.trailing
    trailing_active = state.trailing_active
    if trailing is not None:
        trailing_active = trailing_active or current_rr >= trailing.activation_rr
        if trailing_active:
            if trailing.distance_points is not None:
                candidates.append((high_water - sign * trailing.distance_points * held.point, trailing.describe))
            elif trailing.atr_multiple is not None:
                if atr is not None and atr.is_finite() and atr > _ZERO:
                    candidates.append((high_water - sign * trailing.atr_multiple * atr, trailing.describe))
            elif swing is not None and swing.is_finite() and swing > _ZERO:
                candidates.append((swing - sign * held.point, trailing.describe))

    stop = current_sl
    why: list[str] = []
    for raw, reason in candidates:
        candidate = _round_tight(raw, held.point, buy)
        placeable = candidate < price if buy else candidate > price
        if not placeable or candidate <= _ZERO:
            continue
        if candidate == stop and why:
            why.append(reason)
        elif candidate > stop if buy else candidate < stop:
            stop, why = candidate, [reason]

    partial_done = state.partial_done
    partial_volume: Decimal | None = None
    if rules.partial is not None and not partial_done and current_rr >= rules.partial.at_rr:
        partial_done = True
        partial_volume = _partial_volume(held, rules.partial.fraction)

    return Decision(
        stop=stop,
        state=TrailState(
            high_water=high_water,
            current_rr=current_rr,
            trailing_active=trailing_active,
            breakeven_done=breakeven_done,
            locks_done=locks_done,
            partial_done=partial_done,
        ),
        why=tuple(why),
        partial_volume=partial_volume,
    )


def _round_tight(stop: Decimal, point: Decimal, buy: bool) -> Decimal:
    """To the symbol's point, the way that does not loosen: up for a buy, down for a sell."""
    steps = (stop / point).to_integral_value(rounding=ROUND_CEILING if buy else ROUND_FLOOR)
    return steps * point


def _partial_volume(held: Held, fraction: Decimal) -> Decimal | None:
    """volume x fraction rounded down to the step; none when that is below the step or the
    minimum, or would leave less than the minimum open."""
    steps = (held.volume * fraction / held.volume_step).to_integral_value(rounding=ROUND_FLOOR)
    volume = steps * held.volume_step
    if volume < held.volume_step or volume < held.volume_min or held.volume - volume < held.volume_min:
        return None
    return volume
