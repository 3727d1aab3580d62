"""HAEXEC_MARKET, HAEXEC_MARKET_SPEED, HAEXEC_MARKET_SEED, HAEXEC_MARKET_SYMBOLS: parsed
here, each broken rule one line naming the variable (ConfigError, exit 2 at the CLI)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from common.errors import ConfigError
from engine.market.simsymbols import CATALOG, DEFAULT_SYMBOLS

SOURCES = ("sim", "replay:PATH", "mt5", "gateway")
MAX_SPEED = 1_000_000


@dataclass(frozen=True)
class MarketSettings:
    source: str  # "sim", "replay", "mt5" or "gateway"
    replay_path: Path | None = None
    speed: float | None = 1.0  # replay only; None: as fast as the consumer pumps ("max")
    seed: int = 0
    symbols: tuple[str, ...] | None = None  # None: the source's own set (sim: DEFAULT_SYMBOLS)


def market_settings(env: Mapping[str, str] | None = None) -> MarketSettings:
    env = os.environ if env is None else env
    raw = (env.get("HAEXEC_MARKET") or "sim").strip()
    path: Path | None = None
    if raw.startswith("replay:"):
        source = "replay"
        path = Path(raw.removeprefix("replay:"))
        if not str(path) or str(path) == ".":
            raise ConfigError("HAEXEC_MARKET", "replay needs a file: replay:PATH")
        if not path.is_file():
            raise ConfigError("HAEXEC_MARKET", f"replay file {str(path)!r} does not exist or is not a file")
    elif raw in ("sim", "mt5", "gateway"):
        source = raw
    else:
        raise ConfigError("HAEXEC_MARKET", f"must be one of {', '.join(SOURCES)} (got {raw!r})")
    return MarketSettings(
        source=source,
        replay_path=path,
        speed=_speed(env.get("HAEXEC_MARKET_SPEED")),
        seed=_seed(env.get("HAEXEC_MARKET_SEED")),
        symbols=_symbols(env.get("HAEXEC_MARKET_SYMBOLS"), source),
    )


def _speed(raw: str | None) -> float | None:
    if raw is None or raw.strip() == "":
        return 1.0
    text = raw.strip()
    if text.lower() == "max":
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ConfigError("HAEXEC_MARKET_SPEED", f"must be a positive number or max (got {raw!r})") from None
    if not value.is_finite() or not 0 < value <= MAX_SPEED:
        raise ConfigError("HAEXEC_MARKET_SPEED", f"must be > 0 and <= {MAX_SPEED:,}, or max (got {raw!r})")
    return float(value)


def _seed(raw: str | None) -> int:
    if raw is None or raw.strip() == "":
        return 0
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError("HAEXEC_MARKET_SEED", f"must be an integer (got {raw!r})") from None
    if not 0 <= value < 2**63:
        raise ConfigError("HAEXEC_MARKET_SEED", f"must be 0 .. 2**63 - 1 (got {raw!r})")
    return value


def _symbols(raw: str | None, source: str) -> tuple[str, ...] | None:
    if raw is None or raw.strip() == "":
        return DEFAULT_SYMBOLS if source == "sim" else None
    names = [s.strip() for s in raw.split(",")]
    if any(not n for n in names):
        raise ConfigError("HAEXEC_MARKET_SYMBOLS", f"must be comma-separated symbol names, no empty one (got {raw!r})")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError("HAEXEC_MARKET_SYMBOLS", f"names {', '.join(twice)} more than once")
    if source == "sim":
        unknown = [n for n in names if n not in CATALOG]
        if unknown:
            raise ConfigError(
                "HAEXEC_MARKET_SYMBOLS",
                f"the sim source has no {', '.join(unknown)} (it has {', '.join(CATALOG)})",
            )
    return tuple(names)
