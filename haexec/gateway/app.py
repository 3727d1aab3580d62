"""The gateway's HTTP surface: a narrow JSON RPC, nothing more.

Each route is one Broker operation with typed, strictly decoded arguments; nothing sent to the
gateway is ever evaluated (the mt5linux bridge's rpyc classic mode runs any code it is sent,
which is exactly what a gatekeeper must not do). Every /v1 route needs the bearer token;
/health and /metrics do not (they say nothing an order could be built from).

| route | answer |
| --- | --- |
| GET /v1/info | cluster, deadline, magic, account login and server, the promise |
| GET /v1/account, /v1/positions, /v1/orders | the terminal's |
| GET /v1/quote?symbol=S | spec and bid/ask; 404 for a symbol the terminal cannot trade |
| GET /v1/journal?tag=T | the journal's calls of a tag and what they mean |
| GET /v1/tags?tag=T | the journal, then the terminal's orders under the tag (find_by_tag) |
| POST /v1/send | {"fence", "order"} |
| POST /v1/modify | {"fence", "ticket", "sl", "tp"} |
| POST /v1/close, /v1/cancel | {"fence", "ticket"} |

Answers to a mutating call: 200 with the result; 409 epoch superseded (with the reason and the
promise) or tag in flight; 503 terminal busy (naming what holds it), epoch not confirmed, or
not sent; 401, 400, 408, 413, 422 as for the replicas. Nothing was sent unless the answer is 200.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.brokers.base import SymbolUnavailable
from engine.brokers.gateway_wire import (
    SYMBOL,
    TAG,
    TICKET,
    Reader,
    WireError,
    account_to_json,
    closing_deal_to_json,
    fence_from_json,
    order_from_json,
    position_to_json,
    quote_to_json,
    result_to_json,
    venue_order_to_json,
)
from engine.signal import BodyTooLarge, DuplicateKey, loads
from haexec.gateway.promise import Reason, Refused, Unconfirmed
from haexec.gateway.service import Answer, Busy, Gateway, TagInFlight, Unavailable
from haexec.gateway.terminal import Disconnected
from haexec.http import BodyRefused, _authorized, _read_body
from haexec.settings import HttpLimits

log = logging.getLogger("haexec.gateway.http")

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status)


def _answer(a: Answer) -> JSONResponse:
    return JSONResponse({"result": result_to_json(a.result), "replayed": a.replayed, "call": a.call})


def _failure(e: Exception) -> JSONResponse:
    """An expected refusal as its answer (nothing was sent in any of them)."""
    if isinstance(e, Refused):
        error = "wrong cluster" if e.reason is Reason.WRONG_CLUSTER else "epoch superseded"
        return _error(409, error, reason=e.reason.value, detail=str(e), promise=e.promise.as_json(), stage=e.stage)
    if isinstance(e, TagInFlight):
        return _error(409, "tag in flight", tag=e.tag, detail=str(e), call=e.call.as_json())
    if isinstance(e, Busy):
        return _error(503, "terminal busy", detail=str(e), in_flight=e.in_flight)
    if isinstance(e, Unconfirmed):
        return _error(503, "epoch not confirmed", detail=str(e))
    if isinstance(e, Disconnected):
        return _error(503, "terminal disconnected", detail=str(e))
    if isinstance(e, Unavailable):
        return _error(503, "not sent", detail=str(e))
    if isinstance(e, WireError):
        return _error(422, "invalid request", field=e.field, detail=str(e))
    if isinstance(e, SymbolUnavailable):
        return _error(404, "symbol unavailable", detail=str(e))
    raise e


EXPECTED = (Refused, TagInFlight, Busy, Unconfirmed, Unavailable, WireError, SymbolUnavailable, Disconnected)


def build_app(gw: Gateway, token: str, limits: HttpLimits, info: Callable[[], dict[str, Any]]) -> Starlette:
    body_timeout_s = limits.body_timeout_ms / 1000

    def guarded(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            if not _authorized(request, token):
                return _error(401, "missing or wrong bearer token")
            try:
                return await handler(request)
            except EXPECTED as e:
                return _failure(e)

        return run

    async def body(request: Request) -> Reader:
        try:
            raw = await _read_body(request, body_timeout_s)
            obj = loads(raw)
        except BodyRefused as e:
            raise _Answered(e.response) from None
        except BodyTooLarge as e:
            raise _Answered(_error(413, str(e))) from None
        except DuplicateKey as e:
            raise _Answered(_error(422, "invalid request", detail=f"body: {e}")) from None
        except (ValueError, RecursionError):
            raise _Answered(_error(400, "body is not valid JSON")) from None
        return Reader(obj, "")

    def query(request: Request, name: str, pattern: Any) -> str:
        value = request.query_params.get(name)
        if value is None or not pattern.fullmatch(value):
            raise WireError(name, f"query parameter must match {pattern.pattern}")
        return value

    def posted(handler: Callable[[Reader], Awaitable[Response]]) -> Handler:
        async def run(request: Request) -> Response:
            try:
                r = await body(request)
            except _Answered as a:
                return a.response
            return await handler(r)

        return guarded(run)

    async def health(_: Request) -> Response:
        state = await run_in_threadpool(gw_health, gw)
        ok = all(v == "ok" for v in state["checks"].values())
        return JSONResponse({"status": "ok" if ok else "degraded", **state}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def get_info(_: Request) -> Response:
        return JSONResponse({**info(), "promise": gw.promise.current.as_json()})

    async def account(_: Request) -> Response:
        return JSONResponse({"account": account_to_json(await run_in_threadpool(gw.account))})

    async def positions(_: Request) -> Response:
        rows = await run_in_threadpool(gw.positions)
        return JSONResponse({"positions": [position_to_json(p) for p in rows]})

    async def orders(_: Request) -> Response:
        rows = await run_in_threadpool(gw.orders)
        return JSONResponse({"orders": [venue_order_to_json(v) for v in rows]})

    async def quote(request: Request) -> Response:
        symbol = query(request, "symbol", SYMBOL)
        return JSONResponse({"quote": quote_to_json(await run_in_threadpool(gw.quote, symbol))})

    async def closing_deal(request: Request) -> Response:
        deal = await run_in_threadpool(gw.closing_deal, query(request, "ticket", TICKET))
        return JSONResponse({"deal": None if deal is None else closing_deal_to_json(deal)})

    async def journal(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(gw.journal_of, query(request, "tag", TAG)))

    async def tags(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(gw.find_by_tag, query(request, "tag", TAG)))

    async def send(r: Reader) -> Response:
        fence = fence_from_json(r.mapping("fence"))
        req = order_from_json(r.mapping("order"))
        r.done()
        if req.epoch != fence.epoch:
            raise WireError("order.epoch", f"must be the fence's epoch {fence.epoch}")
        return _answer(await run_in_threadpool(gw.send, fence, req))

    async def modify(r: Reader) -> Response:
        fence = fence_from_json(r.mapping("fence"))
        ticket = r.text("ticket", TICKET)
        sl = r.decimal("sl", optional=True, positive=True)
        tp = r.decimal("tp", optional=True, positive=True)
        r.done()
        return _answer(await run_in_threadpool(gw.modify, fence, ticket, sl, tp))

    async def close(r: Reader) -> Response:
        fence = fence_from_json(r.mapping("fence"))
        ticket = r.text("ticket", TICKET)
        volume = r.decimal("volume", optional=True, positive=True)  # a partial close
        r.done()
        return _answer(await run_in_threadpool(gw.close, fence, ticket, volume))

    async def cancel(r: Reader) -> Response:
        fence = fence_from_json(r.mapping("fence"))
        ticket = r.text("ticket", TICKET)
        r.done()
        return _answer(await run_in_threadpool(gw.cancel, fence, ticket))

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/v1/info", guarded(get_info)),
            Route("/v1/account", guarded(account)),
            Route("/v1/positions", guarded(positions)),
            Route("/v1/orders", guarded(orders)),
            Route("/v1/quote", guarded(quote)),
            Route("/v1/journal", guarded(journal)),
            Route("/v1/closing-deal", guarded(closing_deal)),
            Route("/v1/tags", guarded(tags)),
            Route("/v1/send", posted(send), methods=["POST"]),
            Route("/v1/modify", posted(modify), methods=["POST"]),
            Route("/v1/close", posted(close), methods=["POST"]),
            Route("/v1/cancel", posted(cancel), methods=["POST"]),
        ]
    )


class _Answered(Exception):
    """The body could not be read; `response` says why."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def gw_health(gw: Gateway) -> dict[str, Any]:
    """/health: the terminal as last probed, the journal, and the promise."""
    term = gw.terminal
    running = gw.broker.in_flight()
    if running is not None and running[2]:
        sending = None
        try:
            sending = gw.journal.sending()
        except Exception:  # the health answer must come even if the journal does not
            pass
        what = f"{sending.op} of {sending.tag or sending.target}" if sending else running[0]
        terminal = f"busy: {what} has not returned after {running[1]:.1f}s"
    elif gw.link.down:
        terminal = f"disconnected: {gw.link.describe()}"
    elif term.connected is None:
        terminal = "not probed yet"
    elif term.error is not None:
        terminal = f"unreachable: {term.error}"
    elif not term.connected:
        terminal = "not connected to the trade server"
    elif not term.trade_allowed:
        terminal = "algorithmic trading disabled in the terminal"
    else:
        terminal = "ok"
    return {
        "checks": {"terminal": terminal, "journal": "ok" if gw.journal_error is None else gw.journal_error},
        "promise": gw.promise.current.as_json(),
        "journal_entries": gw.journal.rows,
        "cluster": gw.cluster,
    }
