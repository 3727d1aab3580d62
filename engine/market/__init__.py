"""Market data behind one interface (`Market`): ticks, bars (closed + forming, as arrays),
subscriptions, symbol specs, from the source HAEXEC_MARKET names. See base.py for the types
and service.py for the age rules; README "Market data" for the settings."""

from __future__ import annotations

from collections.abc import Callable

from engine.market.base import (
    BadInput,
    BadRequest,
    Bars,
    FeedUnavailable,
    MarketDataError,
    MarketSpec,
    Source,
    StaleData,
    Tick,
    Ticks,
    Timeframe,
    TradeMode,
    UnknownSymbol,
    UnknownTimeframe,
)
from engine.market.mt5 import MT5Source, Runner
from engine.market.replay import CursorStore, ReplaySource, load
from engine.market.service import Market
from engine.market.settings import MarketSettings, market_settings
from engine.market.sim import SimSource, wall_ms

__all__ = [
    "BadInput",
    "BadRequest",
    "Bars",
    "FeedUnavailable",
    "Market",
    "MarketDataError",
    "MarketSettings",
    "MarketSpec",
    "StaleData",
    "Tick",
    "Ticks",
    "Timeframe",
    "TradeMode",
    "UnknownSymbol",
    "UnknownTimeframe",
    "market_settings",
    "open_source",
]


def open_source(
    settings: MarketSettings,
    *,
    clock: Callable[[], int] = wall_ms,
    cursor_store: CursorStore | None = None,
    mt5_run: Runner | None = None,
    mt5_deadline_ms: int = 1000,
) -> Source:
    """The source the settings name. A replay file is loaded and checked whole here
    (BadInput before anything plays); `cursor_store` persists its position (PgCursorStore
    in a replica); `mt5_run` shares the MT5 broker's worker thread."""
    if settings.source == "sim":
        if settings.symbols:
            return SimSource(settings.seed, settings.symbols, clock=clock)
        return SimSource(settings.seed, clock=clock)
    if settings.source == "replay":
        assert settings.replay_path is not None
        return ReplaySource(
            load(settings.replay_path),
            speed=settings.speed,
            clock=clock,
            store=cursor_store,
            symbols=settings.symbols,
        )
    if settings.source == "gateway":
        # It needs the gateway's URL, token and CA: haexec.marketdata.open_market opens it.
        raise BadInput("the gateway source is read by replicas and `haexec market`, not here (use sim, replay or mt5)")
    return MT5Source(run=mt5_run, deadline_ms=mt5_deadline_ms, symbols=settings.symbols, clock=clock)
