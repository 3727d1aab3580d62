"""The gateway's market data routes (read-only, bearer token as every /v1 route), served by
engine.market's MT5Source on the terminal's one worker (`MT5Broker.run_on_terminal`, as a
replica with HAEXEC_BROKER=mt5 and HAEXEC_MARKET=mt5 shares it), each call within the
gateway's deadline. The replica's side is engine/market/gateway.py; the JSON is
engine/market/wire.py (points and digits, never floats).

| route | query | answer |
| --- | --- | --- |
| GET /v1/market/now | - | `now_ms` |
| GET /v1/market/symbols | - | `symbols` |
| GET /v1/market/spec | symbol | `spec` |
| GET /v1/market/tick | symbol | `tick` |
| GET /v1/market/ticks | symbol, after_ms, until_ms, limit | `ticks` (after_ms < time <= until_ms) |
| GET /v1/market/bars | symbol, timeframe, count[, after_ms] | `bars`: closed bars |
| GET /v1/market/forming | symbol, timeframe | `bars`: the forming bar (no row before its first tick) |

Every answer carries `now_ms` (the source's clock). A query parameter that is missing,
unknown, repeated or malformed is 400 naming it; an unknown symbol 404; a terminal that
cannot be read (busy with a call past its deadline, disconnected, timed out) 503.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.brokers.gateway_wire import SYMBOL
from engine.brokers.mt5 import MT5Broker
from engine.market.base import MAX_BARS, MIN_BARS, BadRequest, FeedUnavailable, Timeframe, UnknownSymbol
from engine.market.mt5 import MT5Source
from engine.market.wire import bars_to_json, spec_to_json, tick_to_json, ticks_to_json
from haexec.gateway.metrics import GatewayMetrics
from haexec.http import _authorized

INTEGER = re.compile(r"-?[0-9]{1,19}")
MAX_TICKS = 100_000  # one answer's worth; a reader pages on with after_ms
INT64_MAX = 2**63 - 1

Handler = Callable[[Request], Awaitable[Response]]


class BadQuery(Exception):
    """A query parameter that cannot be used; the message names it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"query parameter {name}: {problem}")
        self.name = name


class Query:
    """The query string of one request, read strictly: each parameter once, none unknown."""

    def __init__(self, request: Request, allowed: tuple[str, ...]) -> None:
        items = request.query_params.multi_items()
        for key, _ in items:
            if key not in allowed:
                raise BadQuery(key, f"is not one of {', '.join(allowed) or 'none'} for this route")
        names = [k for k, _ in items]
        for key in names:
            if names.count(key) > 1:
                raise BadQuery(key, "is given more than once")
        self._values = dict(items)

    def text(self, name: str, pattern: re.Pattern[str]) -> str:
        value = self._values.get(name)
        if value is None:
            raise BadQuery(name, "is required")
        if not pattern.fullmatch(value):
            raise BadQuery(name, f"must match {pattern.pattern} (got {value[:80]!r})")
        return value

    def integer(self, name: str, low: int, high: int, optional: bool = False) -> int | None:
        value = self._values.get(name)
        if value is None:
            if optional:
                return None
            raise BadQuery(name, "is required")
        if not INTEGER.fullmatch(value) or not low <= int(value) <= high:
            raise BadQuery(name, f"must be an integer {low}..{high} (got {value[:80]!r})")
        return int(value)

    def timeframe(self) -> Timeframe:
        value = self._values.get("timeframe")
        if value is None:
            raise BadQuery("timeframe", "is required")
        if value not in Timeframe.__members__:
            raise BadQuery("timeframe", f"must be one of {', '.join(Timeframe.__members__)} (got {value[:80]!r})")
        return Timeframe[value]


def market_source(broker: MT5Broker, deadline_ms: int) -> MT5Source:
    """MT5 market data on the broker's terminal worker: one connection, one thread."""
    return MT5Source(run=broker.run_on_terminal, deadline_ms=deadline_ms)


def market_routes(source: MT5Source, token: str, metrics: GatewayMetrics) -> list[Route]:
    def route(name: str, allowed: tuple[str, ...], read: Callable[[Query], tuple[str, Any]]) -> Route:
        call = f"market_{name}"

        async def run(request: Request) -> Response:
            if not _authorized(request, token):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
            try:
                key, value = await run_in_threadpool(read, Query(request, allowed))
            except BadQuery as e:
                metrics.calls.labels(call, "bad_request").inc()
                return JSONResponse({"error": "bad query", "field": e.name, "detail": str(e)}, status_code=400)
            except BadRequest as e:
                metrics.calls.labels(call, "bad_request").inc()
                return JSONResponse({"error": "bad query", "detail": str(e)}, status_code=400)
            except UnknownSymbol as e:
                metrics.calls.labels(call, "unknown_symbol").inc()
                return JSONResponse({"error": "unknown symbol", "detail": str(e)}, status_code=404)
            except FeedUnavailable as e:
                metrics.calls.labels(call, "error").inc()
                return JSONResponse({"error": "market data unavailable", "detail": str(e)}, status_code=503)
            metrics.calls.labels(call, "ok").inc()
            return JSONResponse({key: value, "now_ms": source.now_ms()})

        return Route(f"/v1/market/{name}", run)

    def symbol(q: Query) -> str:
        return q.text("symbol", SYMBOL)

    def ticks(q: Query) -> tuple[str, Any]:
        sym = symbol(q)
        after = q.integer("after_ms", -INT64_MAX, INT64_MAX)
        until = q.integer("until_ms", -INT64_MAX, INT64_MAX)
        limit = q.integer("limit", 1, MAX_TICKS)
        assert after is not None and until is not None and limit is not None
        return "ticks", ticks_to_json(source.ticks(sym, after, until, limit))

    def bars(q: Query) -> tuple[str, Any]:
        sym, tf = symbol(q), q.timeframe()
        count = q.integer("count", MIN_BARS, MAX_BARS)
        after = q.integer("after_ms", -INT64_MAX, INT64_MAX, optional=True)
        assert count is not None
        return "bars", bars_to_json(source.closed_bars(sym, tf, count, after))

    return [
        route("now", (), lambda q: ("now_ms", source.now_ms())),
        route("symbols", (), lambda q: ("symbols", source.symbols())),
        route("spec", ("symbol",), lambda q: ("spec", spec_to_json(source.spec(symbol(q))))),
        route("tick", ("symbol",), lambda q: ("tick", tick_to_json(source.tick(symbol(q))))),
        route("ticks", ("symbol", "after_ms", "until_ms", "limit"), ticks),
        route("bars", ("symbol", "timeframe", "count", "after_ms"), bars),
        route(
            "forming",
            ("symbol", "timeframe"),
            lambda q: ("bars", bars_to_json(source.forming_bar(symbol(q), q.timeframe()))),
        ),
    ]
