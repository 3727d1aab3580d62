"""The JSON form of market data between the MT5 gateway and a replica (HAEXEC_MARKET=gateway).

Exact, never a float: a MarketSpec's and a Tick's prices are decimal strings; Ticks and Bars
travel as their integer point columns, exactly as they are in the arrays, with `digits`
(price = points x 10**-digits). Decoding is strict (a missing, mistyped or inconsistent field
is a `WireError` naming it): a replica takes nothing from a gateway it cannot read exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from engine.market.base import BAR_COLUMNS, Bars, Int64s, MarketSpec, Tick, Ticks, Timeframe, TradeMode

TICK_COLUMNS = ("time_ms", "bid", "ask", "last")
MAX_DIGITS = 18  # a venue's price digits; past this a points integer would not fit an int64 price
INT64 = (-(2**63), 2**63 - 1)
SPEC_DECIMALS = ("point", "contract_size", "tick_size", "tick_value", "volume_min", "volume_max", "volume_step")


class WireError(ValueError):
    """A field of a market data answer is missing or malformed; the message names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _dec(value: Decimal) -> str:
    return format(value, "f")


def _field(obj: Mapping[str, Any], where: str, key: str) -> Any:
    if key not in obj:
        raise WireError(f"{where}.{key}", "is required")
    return obj[key]


def _object(obj: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise WireError(where, "must be a JSON object")
    return obj


def _int(obj: Mapping[str, Any], where: str, key: str, low: int = INT64[0]) -> int:
    value = _field(obj, where, key)
    if type(value) is not int or not low <= value <= INT64[1]:
        raise WireError(f"{where}.{key}", f"must be an integer {low}..{INT64[1]} (got {value!r})")
    return value


def _text(obj: Mapping[str, Any], where: str, key: str) -> str:
    value = _field(obj, where, key)
    if not isinstance(value, str) or not value:
        raise WireError(f"{where}.{key}", f"must be a non-empty string (got {value!r})")
    return value


def _decimal(obj: Mapping[str, Any], where: str, key: str, optional: bool = False) -> Decimal | None:
    value = _field(obj, where, key)
    if value is None and optional:
        return None
    try:
        if not isinstance(value, str):
            raise InvalidOperation
        parsed = Decimal(value)
    except InvalidOperation:
        raise WireError(f"{where}.{key}", f"must be a decimal string (got {value!r})") from None
    if not parsed.is_finite():
        raise WireError(f"{where}.{key}", f"must be finite (got {value!r})")
    return parsed


def _bool(obj: Mapping[str, Any], where: str, key: str) -> bool:
    value = _field(obj, where, key)
    if type(value) is not bool:
        raise WireError(f"{where}.{key}", f"must be true or false (got {value!r})")
    return value


def _digits(obj: Mapping[str, Any], where: str) -> int:
    digits = _int(obj, where, "digits", 0)
    if digits > MAX_DIGITS:
        raise WireError(f"{where}.digits", f"must be 0..{MAX_DIGITS} (got {digits})")
    return digits


def _column(obj: Mapping[str, Any], where: str, key: str, rows: int | None) -> Int64s:
    value = _field(obj, where, key)
    if not isinstance(value, list) or any(type(v) is not int or not INT64[0] <= v <= INT64[1] for v in value):
        raise WireError(f"{where}.{key}", "must be a list of 64-bit integers")
    if rows is not None and len(value) != rows:
        raise WireError(f"{where}.{key}", f"has {len(value)} rows, time_ms has {rows}")
    return np.array(value, dtype=np.int64)


def _columns(obj: Mapping[str, Any], where: str, names: tuple[str, ...]) -> list[Int64s]:
    first = _column(obj, where, names[0], None)
    return [first, *(_column(obj, where, n, len(first)) for n in names[1:])]


# ---- MarketSpec ----


def spec_to_json(spec: MarketSpec) -> dict[str, Any]:
    return {
        "symbol": spec.symbol,
        "digits": spec.digits,
        **{name: _dec(getattr(spec, name)) for name in SPEC_DECIMALS},
        "stops_level": spec.stops_level,
        "freeze_level": spec.freeze_level,
        "trade_mode": int(spec.trade_mode),
        "currency_profit": spec.currency_profit,
    }


def spec_from_json(obj: Any, where: str = "spec") -> MarketSpec:
    o = _object(obj, where)
    mode = _int(o, where, "trade_mode", 0)
    try:
        trade_mode = TradeMode(mode)
    except ValueError:
        raise WireError(f"{where}.trade_mode", f"must be one of {[int(m) for m in TradeMode]} (got {mode})") from None
    decimals = {name: _decimal(o, where, name) for name in SPEC_DECIMALS}
    try:
        return MarketSpec(
            symbol=_text(o, where, "symbol"),
            digits=_digits(o, where),
            stops_level=_int(o, where, "stops_level", 0),
            freeze_level=_int(o, where, "freeze_level", 0),
            trade_mode=trade_mode,
            currency_profit=_text(o, where, "currency_profit"),
            **decimals,  # type: ignore[arg-type]
        )
    except ValueError as e:
        if isinstance(e, WireError):
            raise
        raise WireError(where, str(e)) from None


# ---- Tick ----


def tick_to_json(tick: Tick) -> dict[str, Any]:
    return {
        "symbol": tick.symbol,
        "time_ms": tick.time_ms,
        "bid": _dec(tick.bid),
        "ask": _dec(tick.ask),
        "last": None if tick.last is None else _dec(tick.last),
        "age_ms": tick.age_ms,
    }


def tick_from_json(obj: Any, where: str = "tick") -> Tick:
    o = _object(obj, where)
    bid = _decimal(o, where, "bid")
    ask = _decimal(o, where, "ask")
    assert bid is not None and ask is not None
    return Tick(
        symbol=_text(o, where, "symbol"),
        time_ms=_int(o, where, "time_ms"),
        bid=bid,
        ask=ask,
        last=_decimal(o, where, "last", optional=True),
        age_ms=_int(o, where, "age_ms"),
    )


# ---- Ticks ----


def ticks_to_json(ticks: Ticks) -> dict[str, Any]:
    return {
        "symbol": ticks.symbol,
        "digits": ticks.digits,
        **{c: getattr(ticks, c).tolist() for c in TICK_COLUMNS},
    }


def ticks_from_json(obj: Any, where: str = "ticks") -> Ticks:
    o = _object(obj, where)
    time_ms, bid, ask, last = _columns(o, where, TICK_COLUMNS)
    return Ticks(_text(o, where, "symbol"), _digits(o, where), time_ms, bid, ask, last)


# ---- Bars ----


def bars_to_json(bars: Bars) -> dict[str, Any]:
    return {
        "symbol": bars.symbol,
        "timeframe": bars.timeframe.name,
        "digits": bars.digits,
        "forming": bars.forming,
        "as_of_ms": bars.as_of_ms,
        "age_ms": bars.age_ms,
        **{c: column.tolist() for c, column in zip(BAR_COLUMNS, bars.columns(), strict=True)},
    }


def bars_from_json(obj: Any, where: str = "bars") -> Bars:
    o = _object(obj, where)
    raw = _text(o, where, "timeframe")
    if raw not in Timeframe.__members__:
        raise WireError(f"{where}.timeframe", f"must be one of {', '.join(Timeframe.__members__)} (got {raw!r})")
    return Bars.of_columns(
        _text(o, where, "symbol"),
        Timeframe[raw],
        _digits(o, where),
        _columns(o, where, BAR_COLUMNS),
        forming=_bool(o, where, "forming"),
        as_of_ms=_int(o, where, "as_of_ms"),
        age_ms=_int(o, where, "age_ms"),
    )
