"""The gateway source (HAEXEC_MARKET=gateway): market data of the MT5 terminal read through
the fenced gateway (`haexec gateway`, routes /v1/market/...), so a replica on Linux needs no
`MetaTrader5` package and the terminal keeps its one connection.

The gateway runs engine.market's MT5Source on its terminal worker and answers in the wire
form of engine/market/wire.py (points and digits, never floats). Here: a gateway that does
not answer (unreachable, 503 busy or disconnected terminal, a malformed answer) is
FeedUnavailable, so the bar cache serves what it has within its age limit; 404 is
UnknownSymbol; 400 BadRequest (the gateway names the parameter).

`now_ms` never calls out: the gateway's clock is learned from the `now_ms` every answer
carries (as the offset from this host's wall clock at the middle of the call) and read
locally, so the cache can age what it holds while the gateway is away.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from engine.gateway_client import NoAnswer, NotSent, Transport
from engine.market.base import (
    BadRequest,
    Bars,
    FeedUnavailable,
    MarketSpec,
    Tick,
    Ticks,
    Timeframe,
    UnknownSymbol,
    check_count,
)
from engine.market.sim import wall_ms
from engine.market.wire import WireError, bars_from_json, spec_from_json, tick_from_json, ticks_from_json

log = logging.getLogger("haexec.engine.market.gateway")

PREFIX = "/v1/market"


class GatewaySource:
    name = "gateway"
    live = True

    def __init__(
        self,
        url: str,
        token: str,
        *,
        ca_file: str | None = None,
        deadline_ms: int = 1000,
        symbols: Sequence[str] | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        if deadline_ms <= 0:
            raise ValueError("deadline_ms must be > 0")
        self._transport = Transport(url, token, ca_file)
        self.deadline_ms = deadline_ms
        self._symbols = list(symbols) if symbols is not None else None
        self._clock = clock
        self._offset_ms: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the token
        return f"GatewaySource({self._transport.shown})"

    __str__ = __repr__

    def connect(self) -> None:
        """Read the gateway's clock once: FeedUnavailable when it does not answer."""
        self._get("now")

    def close(self) -> None:
        self._transport.close()

    def _get(self, route: str, **query: str | int) -> dict[str, Any]:
        path = f"{PREFIX}/{route}"
        if query:
            path += "?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        shown = self._transport.shown
        sent = self._clock()
        try:
            reply = self._transport.call("GET", path, None, self.deadline_ms / 1000)
        except (NotSent, NoAnswer) as e:
            raise FeedUnavailable(f"gateway {shown} unreachable: {e}") from None
        if reply.status == 404:
            raise UnknownSymbol(f"gateway {shown}: {reply.error}")
        if reply.status == 400:
            raise BadRequest(f"gateway {shown}: {reply.error}")
        if reply.status != 200:  # 401 (a wrong token) included: the data cannot be had
            raise FeedUnavailable(f"gateway {shown} {route}: HTTP {reply.status} {reply.error}")
        now = reply.body.get("now_ms")
        if type(now) is int:
            with self._lock:
                self._offset_ms = now - (sent + self._clock()) // 2
        return reply.body

    def _decoded(self, what: str, decode: Callable[[Any], Any], value: Any) -> Any:
        try:
            return decode(value)
        except WireError as e:
            raise FeedUnavailable(f"gateway {self._transport.shown} answered a malformed {what}: {e}") from None

    def _venue(self, symbol: str) -> str:
        if self._symbols is not None and symbol not in self._symbols:
            raise UnknownSymbol(f"unknown symbol {symbol!r}: the gateway source has {', '.join(self._symbols)}")
        return symbol

    def _matches(self, what: str, symbol: str, got: str) -> None:
        if got != symbol:
            raise FeedUnavailable(f"gateway answered {what} of {got!r} for {symbol!r}")

    def now_ms(self) -> int:
        with self._lock:
            offset = self._offset_ms
        return self._clock() + (offset or 0)

    def symbols(self) -> list[str]:
        if self._symbols is not None:
            return list(self._symbols)
        listed = self._get("symbols").get("symbols")
        if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
            raise FeedUnavailable(f"gateway {self._transport.shown} answered a malformed symbol list")
        return listed

    def spec(self, symbol: str) -> MarketSpec:
        body = self._get("spec", symbol=self._venue(symbol))
        spec: MarketSpec = self._decoded("spec", spec_from_json, body.get("spec"))
        self._matches("the spec", symbol, spec.symbol)
        return spec

    def tick(self, symbol: str) -> Tick:
        tick: Tick = self._decoded("tick", tick_from_json, self._get("tick", symbol=self._venue(symbol)).get("tick"))
        self._matches("a tick", symbol, tick.symbol)
        return tick

    def ticks(self, symbol: str, after_ms: int, until_ms: int, limit: int) -> Ticks:
        body = self._get("ticks", symbol=self._venue(symbol), after_ms=after_ms, until_ms=until_ms, limit=limit)
        ticks: Ticks = self._decoded("tick run", ticks_from_json, body.get("ticks"))
        self._matches("ticks", symbol, ticks.symbol)
        return ticks

    def _bars(self, route: str, symbol: str, timeframe: Timeframe, **query: str | int) -> Bars:
        body = self._get(route, symbol=self._venue(symbol), timeframe=timeframe.name, **query)
        bars: Bars = self._decoded("bar series", bars_from_json, body.get("bars"))
        self._matches("bars", symbol, bars.symbol)
        if bars.timeframe is not timeframe:
            raise FeedUnavailable(f"gateway answered {bars.timeframe.name} bars for {timeframe.name}")
        return bars

    def closed_bars(self, symbol: str, timeframe: Timeframe, count: int, after_ms: int | None = None) -> Bars:
        query: dict[str, str | int] = {"count": check_count(count)}
        if after_ms is not None:
            query["after_ms"] = after_ms
        return self._bars("bars", symbol, timeframe, **query)

    def forming_bar(self, symbol: str, timeframe: Timeframe) -> Bars:
        return self._bars("forming", symbol, timeframe)
