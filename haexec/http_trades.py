"""POST /trades, GET /trades, GET /trades/{ticket}, DELETE /trades/{ticket}: trade
registration over HTTP, on any replica, with the bearer token of POST /signals."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.positions.registration import NoSuchPosition, Registrar, RegistrationError
from engine.positions.store import Registered

MAX_TICKET = 64
UNAUTHORIZED = {"error": "missing or wrong bearer token"}


def trade_routes(replica: Any, body_timeout_s: float) -> list[Route]:
    from haexec.http import DB_ERRORS, BodyRefused, _actor, _authorized, read_json

    def registrar() -> Registrar | None:
        return getattr(replica, "registrar", None)

    unavailable = JSONResponse({"error": "trade registration is not available on this replica"}, status_code=503)

    async def post_trade(request: Request) -> Response:
        if not _authorized(request, replica.api_token):
            return JSONResponse(UNAUTHORIZED, status_code=401)
        reg = registrar()
        if reg is None:
            return unavailable
        try:
            body = await read_json(request, body_timeout_s, "trade")
        except BodyRefused as e:
            return e.response
        try:
            row, created = await run_in_threadpool(reg.register, body, _actor(request, None))
        except RegistrationError as e:
            return JSONResponse({"error": "invalid trade", "errors": e.errors}, status_code=422)
        except NoSuchPosition as e:
            return JSONResponse({"error": str(e)}, status_code=404)
        except Registered as e:
            return JSONResponse({"error": str(e), "trade": e.existing.as_json()}, status_code=409)
        except DB_ERRORS:
            return JSONResponse({"error": "database unavailable; nothing was stored"}, status_code=503)
        return JSONResponse(row.as_json(), status_code=201 if created else 200)

    async def list_trades(request: Request) -> Response:
        reg = registrar()
        if reg is None:
            return unavailable
        include_closed = request.query_params.get("all") in ("1", "true")
        try:
            rows = await run_in_threadpool(reg.listing, include_closed)
        except DB_ERRORS:
            return JSONResponse({"error": "database unavailable"}, status_code=503)
        return JSONResponse({"trades": rows})

    async def one_trade(request: Request) -> Response:
        ticket = request.path_params["ticket"]
        reg = registrar()
        if reg is None:
            return unavailable
        if len(ticket) > MAX_TICKET:
            return JSONResponse({"error": "no such trade"}, status_code=404)
        if request.method == "DELETE":
            if not _authorized(request, replica.api_token):
                return JSONResponse(UNAUTHORIZED, status_code=401)
            try:
                done = await run_in_threadpool(reg.unregister, ticket, _actor(request, None))
            except DB_ERRORS:
                return JSONResponse({"error": "database unavailable"}, status_code=503)
            if not done:
                return JSONResponse({"error": f"trade {ticket} is not managed"}, status_code=404)
            return JSONResponse({"ticket": ticket, "managed": False, "note": "the stop stays at the venue"})
        try:
            found = await run_in_threadpool(reg.show, ticket)
        except DB_ERRORS:
            return JSONResponse({"error": "database unavailable"}, status_code=503)
        if found is None:
            return JSONResponse({"error": "no such trade"}, status_code=404)
        return JSONResponse(found)

    return [
        Route("/trades", post_trade, methods=["POST"]),
        Route("/trades", list_trades, methods=["GET"]),
        Route("/trades/{ticket}", one_trade, methods=["GET", "DELETE"]),
    ]
