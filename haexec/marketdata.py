"""Market data for a replica and for `haexec market`: the source HAEXEC_MARKET names, opened
with what it needs here (the replay cursor in PostgreSQL, the MT5 terminal's one thread, the
gateway's URL and token), and the JSON form of a tick, a symbol spec and bars that GET
/market and `--json` print: Decimals as strings (never floats, never an exponent), times
ISO 8601 UTC with milliseconds and Z."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from common.errors import ConfigError
from common.timefmt import iso_utc
from engine.market import Bars, FeedUnavailable, Market, MarketSpec, Tick, UnknownSymbol, open_source
from engine.market.base import BadInput, Source, utc
from engine.market.mt5 import Runner
from engine.market.replay import Cursor, CursorStore
from haexec.settings import Settings


class ReadOnlyCursor:
    """A replay cursor that is read, never written: `haexec market` shows the replay where
    the cluster's replicas last saved it and must not move it (the cursor never moves back,
    so a reader saving its own position would skip the replicas ahead)."""

    def __init__(self, store: CursorStore) -> None:
        self._store = store

    def load(self, feed: str) -> Cursor | None:
        return self._store.load(feed)

    def save(self, feed: str, path: str, cursor: Cursor) -> None:
        pass


def open_market(
    settings: Settings,
    database_url: str | None,
    *,
    terminal: Runner | None = None,
    writes_cursor: bool = True,
) -> Market:
    """The Market over the configured source. `terminal` runs MT5 calls on the broker's
    worker (HAEXEC_BROKER=mt5: reads and orders share the terminal's thread); without it an
    mt5 source has a worker and a terminal connection of its own. ConfigError for a replay
    file that cannot be used or a symbol it lacks (naming the variable); FeedUnavailable
    when the source cannot be opened (the cursor unreadable, no terminal)."""
    engine = settings.engine
    chosen = engine.market
    if chosen.source == "gateway":
        return Market(_gateway_source(settings))
    store: CursorStore | None = None
    if chosen.source == "replay":
        if database_url is None:
            raise FeedUnavailable("a replay keeps its cursor in the database, and none is configured or running")
        from engine.market.cursor import PgCursorStore

        pg = PgCursorStore(database_url, settings.election.cluster)
        store = pg if writes_cursor else ReadOnlyCursor(pg)
    try:
        source = open_source(chosen, cursor_store=store, mt5_run=terminal, mt5_deadline_ms=engine.broker_deadline_ms)
    except BadInput as e:
        raise ConfigError("HAEXEC_MARKET", str(e)) from None
    except UnknownSymbol as e:
        raise ConfigError("HAEXEC_MARKET_SYMBOLS", str(e)) from None
    if chosen.source == "mt5" and terminal is None:
        from engine.market.mt5 import MT5Source

        assert isinstance(source, MT5Source)
        login: dict[str, Any] = {}
        if engine.mt5_login is not None:
            login = {"login": int(engine.mt5_login), "password": engine.mt5_password or ""}
            if engine.mt5_server:
                login["server"] = engine.mt5_server
        try:
            source.connect(engine.mt5_path, **login)
        except FeedUnavailable:
            source.close()
            raise
    return Market(source)


def _gateway_source(settings: Settings) -> Source:
    """HAEXEC_MARKET=gateway: the terminal's data through the gateway the broker settings
    name (HAEXEC_GATEWAY_URL, _TOKEN, _CA); FeedUnavailable when it does not answer."""
    from engine.market.gateway import GatewaySource

    engine = settings.engine
    assert engine.gateway_url and engine.gateway_token  # settings require both with this source
    source = GatewaySource(
        engine.gateway_url,
        engine.gateway_token,
        ca_file=engine.gateway_ca,
        deadline_ms=engine.broker_deadline_ms,
        symbols=engine.market.symbols,
    )
    try:
        source.connect()
    except FeedUnavailable:
        source.close()
        raise
    return source


def dec(value: Decimal) -> str:
    """A Decimal as JSON carries it: a string, in plain notation ("0.00001", not "1E-5")."""
    return format(value, "f")


def tick_json(tick: Tick) -> dict[str, Any]:
    return {
        "time": iso_utc(tick.time),
        "bid": dec(tick.bid),
        "ask": dec(tick.ask),
        "last": None if tick.last is None else dec(tick.last),
        "age_ms": tick.age_ms,
    }


def spec_json(spec: MarketSpec) -> dict[str, Any]:
    return {
        "digits": spec.digits,
        "point": dec(spec.point),
        "contract_size": dec(spec.contract_size),
        "tick_size": dec(spec.tick_size),
        "tick_value": dec(spec.tick_value),
        "volume_min": dec(spec.volume_min),
        "volume_max": dec(spec.volume_max),
        "volume_step": dec(spec.volume_step),
        "stops_level": spec.stops_level,
        "freeze_level": spec.freeze_level,
        "trade_mode": spec.trade_mode.name.lower(),
        "currency_profit": spec.currency_profit,
    }


def quote_json(source: str, tick: Tick, spec: MarketSpec) -> dict[str, Any]:
    """What GET /market/{symbol} and `haexec market tick --json` answer."""
    return {"symbol": tick.symbol, "source": source, "tick": tick_json(tick), "spec": spec_json(spec)}


def bars_json(source: str, bars: Bars) -> dict[str, Any]:
    """`haexec market bars --json`: closed bars oldest first, then the forming one (closed false)."""
    columns = [bars.prices(c) for c in ("open", "high", "low", "close")]
    rows = []
    for i, at in enumerate(bars.times()):
        o, h, lo, c = (col[i] for col in columns)
        rows.append(
            {
                "time": iso_utc(at),
                "open": dec(o),
                "high": dec(h),
                "low": dec(lo),
                "close": dec(c),
                "tick_volume": int(bars.tick_volume[i]),
                "spread": int(bars.spread[i]),
                "closed": not (bars.forming and i == len(bars) - 1),
            }
        )
    return {
        "symbol": bars.symbol,
        "timeframe": bars.timeframe.name,
        "source": source,
        "as_of": iso_utc(utc(bars.as_of_ms)),
        "age_ms": bars.age_ms,
        "bars": rows,
    }
