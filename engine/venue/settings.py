"""HAEXEC_VENUE_*: the paper venue's own settings, each broken rule one line naming the
variable (ConfigError; exit 2 at the CLI). The replicas' paper broker reads the same ones
for the broker rules it checks before booking (hours, trade modes, leverage)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from common.errors import ConfigError
from common.numbers import ascii_decimal, ascii_int
from engine.market.base import Timeframe, TradeMode
from engine.venue.hours import TradingHours, parse_hours

MAX_LEVERAGE = 10_000
MAX_MAXLEN = 10_000_000
MAX_CATCHUP_MS = 86_400_000
MODES = {m.name.lower(): m for m in TradeMode}


@dataclass(frozen=True)
class VenueSettings:
    leverage: int = 100
    stop_out_pct: Decimal = Decimal(50)  # margin level (%) below which positions are closed; 0: never
    hours: TradingHours = field(default_factory=TradingHours)
    trade_modes: Mapping[str, TradeMode] = field(default_factory=dict)  # overrides of the feed's own
    stream_maxlen: int = 10_000  # entries kept per stream (about 40 min of 250 ms ticks)
    catchup_ms: int = 60_000  # after a restart, ticks missed for at most this long are matched
    mark_ms: int = 250  # how often the account snapshot (paper_marks) is written
    bar_timeframes: tuple[Timeframe, ...] = (Timeframe.M1,)
    account_currency: str = "USD"

    def trade_mode(self, symbol: str, feed_mode: TradeMode) -> TradeMode:
        return self.trade_modes.get(symbol, feed_mode)


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = ascii_int(raw.strip())
    except ValueError:
        raise ConfigError(name, f"must be an integer in ASCII digits (got {raw!r})") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be {low}..{high} (got {value})")
    return value


def _trade_modes(raw: str | None) -> dict[str, TradeMode]:
    name = "HAEXEC_VENUE_TRADE_MODES"
    if raw is None or raw.strip() == "":
        return {}
    out: dict[str, TradeMode] = {}
    for entry in raw.split(","):
        symbol, eq, mode = entry.partition("=")
        symbol, mode = symbol.strip(), mode.strip().lower().replace("-", "_")
        if not eq or not symbol:
            raise ConfigError(name, f"{entry.strip()!r} is not SYMBOL=MODE")
        if mode not in MODES:
            raise ConfigError(name, f"{symbol}: mode must be one of {', '.join(MODES)} (got {mode!r})")
        if symbol in out:
            raise ConfigError(name, f"{symbol} is given more than once")
        out[symbol] = MODES[mode]
    return out


def _timeframes(raw: str | None) -> tuple[Timeframe, ...]:
    name = "HAEXEC_VENUE_BAR_TIMEFRAMES"
    if raw is None or raw.strip() == "":
        return (Timeframe.M1,)
    out: list[Timeframe] = []
    for part in raw.split(","):
        text = part.strip().upper()
        if text not in Timeframe.__members__:
            raise ConfigError(name, f"{part.strip()!r} is not a timeframe ({', '.join(Timeframe.__members__)})")
        if Timeframe[text] in out:
            raise ConfigError(name, f"{text} is given more than once")
        out.append(Timeframe[text])
    return tuple(sorted(out, key=lambda t: t.value))


def venue_settings(env: Mapping[str, str] | None = None) -> VenueSettings:
    env = os.environ if env is None else env
    raw_stop_out = (env.get("HAEXEC_VENUE_STOP_OUT_PCT") or "50").strip()
    try:
        stop_out = ascii_decimal(raw_stop_out)
    except ValueError:
        raise ConfigError("HAEXEC_VENUE_STOP_OUT_PCT", f"must be a decimal number (got {raw_stop_out!r})") from None
    if not 0 <= stop_out <= 1000:
        raise ConfigError("HAEXEC_VENUE_STOP_OUT_PCT", f"must be 0 (never) .. 1000 (got {raw_stop_out})")
    return VenueSettings(
        leverage=_int(env, "HAEXEC_VENUE_LEVERAGE", 100, 1, MAX_LEVERAGE),
        stop_out_pct=stop_out,
        hours=parse_hours(env.get("HAEXEC_VENUE_HOURS")),
        trade_modes=_trade_modes(env.get("HAEXEC_VENUE_TRADE_MODES")),
        stream_maxlen=_int(env, "HAEXEC_VENUE_STREAM_MAXLEN", 10_000, 100, MAX_MAXLEN),
        catchup_ms=_int(env, "HAEXEC_VENUE_CATCHUP_MS", 60_000, 0, MAX_CATCHUP_MS),
        mark_ms=_int(env, "HAEXEC_VENUE_MARK_MS", 250, 10, 60_000),
        bar_timeframes=_timeframes(env.get("HAEXEC_VENUE_BAR_TIMEFRAMES")),
    )
