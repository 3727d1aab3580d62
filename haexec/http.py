"""The replica's HTTP surface (Starlette, served by uvicorn on its own thread)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import secrets
import socket
import threading
from contextlib import aclosing
from dataclasses import asdict
from typing import Any, Protocol

import h11
import psycopg
import psycopg_pool
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.errors import first_line
from coordinator.config import MAX_TIMER_MS
from coordinator.service import Coordinator
from engine import intake, store
from engine.brokers.base import Broker, BrokerError
from engine.market import FeedUnavailable, Market, MarketDataError, StaleData, UnknownSymbol
from engine.signal import MAX_BODY_BYTES, BodyTooLarge, DuplicateKey, SignalValidationError, loads
from haexec import book
from haexec.marketdata import quote_json
from haexec.settings import HttpLimits

log = logging.getLogger("haexec.http")

FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
# ASCII only: str.isdigit() and int() also take other scripts' digits ("１０" is 10 to int()).
DIGITS = re.compile(r"[0-9]{1,20}")
DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)
# A request head (request line and headers) larger than this is answered 400 by h11: a producer
# sends a few short headers, and a half-sent head is held in memory until its deadline.
MAX_HEAD_BYTES = 8 * 1024
DEFAULT_LIMITS = HttpLimits()
LINGER_S = 1.0  # how long a connection ended mid-request keeps reading (and dropping) before it closes


class ReplicaState(Protocol):
    coordinator: Coordinator
    engine_pool: ConnectionPool
    api_token: str | None

    @property
    def ready(self) -> bool: ...

    def health_extra(self) -> dict[str, str]: ...

    def loops(self) -> dict[str, dict[str, object]]: ...

    def positions_health(self) -> dict[str, Any]: ...

    def kill_switch(self) -> dict[str, Any] | None: ...

    # The replica's market data (None until it is open) and the oldest tick it serves.
    market: Market | None
    market_max_age_ms: int
    broker: Broker  # GET /account and /positions read it

    def market_health(self) -> str: ...

    def switchover(self, target: str | None, actor: str, reason: str | None) -> tuple[bool, str]: ...


def _authorized(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Both sides stripped the same way and compared as the bytes on the wire: Starlette decodes
    # header values as latin-1, so encoding back to latin-1 recovers what the client sent, and
    # a non-ASCII token (UTF-8 in the environment) matches a client sending it as UTF-8.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("latin-1"), token.strip().encode("utf-8")
    )


def _actor(request: Request, claimed: str | None) -> str:
    """Who an operator action over HTTP is recorded as: the client's address (the API token
    is shared, so it names no one), after what the client says it is (the CLI sends
    cli:<user>), which is a claim, not an identity."""
    where = f"http:{request.client.host}" if request.client else "http:unknown"
    return f"{claimed[:200]} via {where}" if claimed else where


class BodyRefused(Exception):
    """A request body not read to the end; `response` says why."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _too_large(size: int | None = None) -> JSONResponse:
    detail = f" ({size} bytes)" if size is not None else ""
    return JSONResponse({"error": f"body larger than {MAX_BODY_BYTES} bytes{detail}"}, status_code=413)


async def _read_body(request: Request, timeout_s: float) -> bytes:
    """The whole body within `timeout_s`, or BodyRefused. The limit is checked while streaming
    (a declared length is only a shortcut, never trusted), so an oversized body is never held in
    memory; the deadline is what uvicorn lacks, so a body sent a byte a second cannot hold a
    connection (and a handler) for as long as it likes."""
    declared = request.headers.get("content-length")
    if declared is not None and DIGITS.fullmatch(declared) and int(declared) > MAX_BODY_BYTES:
        raise BodyRefused(_too_large(int(declared)))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s), aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise BodyRefused(_too_large())
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused(
            # No "Connection: close" here: it would make uvicorn close at once, where the
            # protocol's lingering close lets a client still sending read this answer.
            JSONResponse({"error": f"body not received within {timeout_s:g}s"}, status_code=408)
        ) from None
    except ClientDisconnect:
        # The client went away mid-body: an everyday event, not a server error (uncaught, it is a
        # 40-line traceback in the log). Nothing was read, so nothing is done; the answer is
        # never delivered (uvicorn drops it) but keeps the handler's path uniform.
        raise BodyRefused(JSONResponse({"error": "client disconnected before the body arrived"}, 400)) from None
    return b"".join(chunks)


async def read_json(request: Request, timeout_s: float, what: str) -> Any:
    """The request's JSON body, decoded as POST /signals decodes it; BodyRefused with the
    answer otherwise: 408, 413, 400 not JSON, 422 a key given twice (`invalid <what>`)."""
    try:
        return loads(await _read_body(request, timeout_s))
    except BodyTooLarge:  # unreachable after _read_body's own check; the limit is loads' too
        raise BodyRefused(_too_large()) from None
    except DuplicateKey as e:
        answer = {"error": f"invalid {what}", "errors": {"body": str(e)}}
        raise BodyRefused(JSONResponse(answer, status_code=422)) from None
    except (ValueError, RecursionError):
        raise BodyRefused(JSONResponse({"error": "body is not valid JSON"}, status_code=400)) from None


def build_app(replica: ReplicaState, limits: HttpLimits = DEFAULT_LIMITS) -> Starlette:
    coord = replica.coordinator
    body_timeout_s = limits.body_timeout_ms / 1000

    async def health(_: Request) -> Response:
        parts = await run_in_threadpool(coord.probe)
        parts.update(replica.health_extra())
        # Not ready (starting, or stopping) is a 503 too: a load balancer must not send to it.
        parts["ready"] = "ok" if replica.ready else "not ready"
        ok = all(v == "ok" for v in parts.values())
        # A halt is an operator's decision, not a fault: shown, never a 503 by itself.
        body = {
            "status": "ok" if ok else "degraded",
            "checks": parts,
            "role": coord.role.value,
            "kill_switch": replica.kill_switch(),
            # The feed's age, never a 503 by itself (Replica.market_health says why).
            "market": replica.market_health(),
            "loops": replica.loops(),
            # The position manager's view, never a 503 by itself (Replica.positions_health).
            "positions": replica.positions_health(),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def ready(_: Request) -> Response:
        if replica.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False}, status_code=503)

    async def leader(_: Request) -> Response:
        if coord.is_leader():
            return JSONResponse({"leader": True, "epoch": coord.epoch})
        return JSONResponse({"leader": False}, status_code=503)

    async def coordinator_leader(_: Request) -> Response:
        view, age_ms = await run_in_threadpool(coord.view)
        return JSONResponse(
            {
                "view_age_ms": round(age_ms),
                "kill_switch": replica.kill_switch(),
                "redis_leader": view.redis_leader,
                "db_leader": view.db_leader,
                "epoch": view.epoch,
                "this_instance": coord.cfg.instance_id,
                "is_leader": coord.is_leader(),
                "split_brain": view.split_brain,
                "stale_leader": view.stale_leader,
                "lease_remaining_ms": round(coord.lease_remaining_ms()),
                "errors": view.errors,
            }
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def switchover(request: Request) -> Response:
        if not _authorized(request, replica.api_token):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            raw = await _read_body(request, body_timeout_s)
        except BodyRefused as e:  # never "no target": a body cut short must not switch leaders
            return e.response
        target = reason = claimed = None
        if raw:
            try:
                body = loads(raw)
            except DuplicateKey as e:
                return JSONResponse({"error": f"body: {e}"}, status_code=422)
            except (ValueError, RecursionError):
                return JSONResponse({"error": "body is not valid JSON"}, status_code=400)
            if not isinstance(body, dict) or not all(
                isinstance(body.get(k, ""), str | None) for k in ("to", "reason", "actor")
            ):
                return JSONResponse(
                    {"error": 'body must be {"to": "<instance id>", "reason": "<why>", "actor": "<who>"}'},
                    status_code=400,
                )
            target = body.get("to") or None
            reason = body.get("reason") or None
            claimed = body.get("actor") or None
        epoch = coord.epoch
        ok, message = await run_in_threadpool(replica.switchover, target, _actor(request, claimed), reason)
        if not ok:
            return JSONResponse({"error": message}, status_code=409)
        return JSONResponse(
            {"status": message, "from": coord.cfg.instance_id, "to": target, "epoch": epoch}, status_code=202
        )

    async def history(request: Request) -> Response:
        raw = request.query_params.get("limit", "20")
        if not DIGITS.fullmatch(raw) or not 1 <= int(raw) <= 1000:
            return JSONResponse({"error": "limit must be an integer from 1 to 1000"}, status_code=400)
        try:
            entries = await run_in_threadpool(coord.history, int(raw))
        except DB_ERRORS:
            return JSONResponse({"error": "database unavailable"}, status_code=503)
        return JSONResponse({"history": [asdict(e) for e in entries]})

    async def post_signal(request: Request) -> Response:
        if not _authorized(request, replica.api_token):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            body = await read_json(request, body_timeout_s, "signal")
        except BodyRefused as e:
            return e.response
        cfg = coord.cfg
        try:
            accepted = await run_in_threadpool(intake.submit, replica.engine_pool, cfg.cluster, cfg.instance_id, body)
        except SignalValidationError as e:
            return JSONResponse({"error": "invalid signal", "errors": e.errors}, status_code=422)
        except DB_ERRORS:
            return JSONResponse({"error": "database unavailable; nothing was stored"}, status_code=503)
        if accepted.conflict:
            # Not a duplicate: the stored signal under this id is another trade, and this one
            # was not stored. The fingerprint names the signal that holds the id.
            return JSONResponse(
                {"error": "signal_id reused with a different trade intent", "fingerprint": accepted.fingerprint},
                status_code=409,
            )
        answer = {"fingerprint": accepted.fingerprint, "status": accepted.status, "duplicate": accepted.duplicate}
        return JSONResponse(answer, status_code=200 if accepted.duplicate else 202)

    async def get_signal(request: Request) -> Response:
        fp = request.path_params["fingerprint"]
        if not FINGERPRINT.match(fp):
            return JSONResponse({"error": "not a fingerprint (64 lowercase hex digits)"}, status_code=404)
        try:
            found = await run_in_threadpool(_show, replica.engine_pool, coord.cfg.cluster, fp)
        except DB_ERRORS:
            return JSONResponse({"error": "database unavailable"}, status_code=503)
        if found is None:
            return JSONResponse({"error": "no such signal"}, status_code=404)
        return JSONResponse(found)

    async def market(request: Request) -> Response:
        symbol = request.path_params["symbol"]
        raw = request.query_params.get("max_age_ms")
        max_age_ms = replica.market_max_age_ms
        if raw is not None:
            if not DIGITS.fullmatch(raw) or int(raw) > MAX_TIMER_MS:
                return JSONResponse({"error": f"max_age_ms must be an integer from 0 to {MAX_TIMER_MS}"}, 400)
            max_age_ms = int(raw)
        data = replica.market
        if data is None:
            return JSONResponse({"error": "market data is not open yet"}, status_code=503)
        if len(symbol) > MAX_SYMBOL:
            return JSONResponse({"error": f"unknown symbol (longer than {MAX_SYMBOL} characters)"}, status_code=404)
        try:
            tick, spec = await run_in_threadpool(_quote, data, symbol, max_age_ms)
        except UnknownSymbol as e:
            return JSONResponse({"error": str(e)}, status_code=404)
        except StaleData as e:
            return JSONResponse(
                {"error": str(e), "symbol": symbol, "age_ms": e.age_ms, "max_age_ms": e.max_age_ms}, status_code=503
            )
        except FeedUnavailable as e:
            return JSONResponse({"error": f"market data unavailable: {e}", "symbol": symbol}, status_code=503)
        except MarketDataError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse(quote_json(data.name, tick, spec))

    async def account(request: Request) -> Response:
        if not _authorized(request, replica.api_token):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            found = await run_in_threadpool(replica.broker.account)
        except BrokerError as e:
            return JSONResponse({"error": f"broker unavailable: {first_line(e)}"}, status_code=503)
        except DB_ERRORS:
            return JSONResponse({"error": "database unavailable"}, status_code=503)
        return JSONResponse(book.account_json(found))

    async def positions(request: Request) -> Response:
        if not _authorized(request, replica.api_token):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            found = await run_in_threadpool(
                book.read_positions, replica.broker, replica.market, replica.market_max_age_ms
            )
        except BrokerError as e:
            return JSONResponse({"error": f"broker unavailable: {first_line(e)}"}, status_code=503)
        except DB_ERRORS:
            return JSONResponse({"error": "database unavailable"}, status_code=503)
        return JSONResponse(found)

    from haexec.http_plans import plan_routes  # here: it builds on this module's helpers
    from haexec.http_trades import trade_routes  # it imports this module's helpers

    return Starlette(
        middleware=[Middleware(ErrorIds)],
        routes=[
            *plan_routes(replica, body_timeout_s),
            Route("/health", health),
            Route("/ready", ready),
            Route("/leader", leader),
            Route("/coordinator/leader", coordinator_leader),
            Route("/metrics", metrics),
            Route("/coordinator/switchover", switchover, methods=["POST"]),
            Route("/coordinator/history", history),
            Route("/signals", post_signal, methods=["POST"]),
            Route("/signals/{fingerprint}", get_signal),
            Route("/market/{symbol}", market),
            Route("/account", account),
            Route("/positions", positions),
            *trade_routes(replica, body_timeout_s),
            *plan_routes(replica, body_timeout_s),
        ],
    )


class ErrorIds:
    """An unexpected fault in a route is a 500 whose body carries an error id, never a
    traceback; the traceback is logged under the same id, so an operator can find it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            error_id = secrets.token_hex(8)
            log.exception("internal error %s on %s %s", error_id, scope.get("method"), scope.get("path"))
            if not started:  # else the answer is half sent: uvicorn closes the connection
                body = {"error": "internal error", "error_id": error_id}
                await JSONResponse(body, status_code=500)(scope, receive, send)


MAX_SYMBOL = 64  # MT5 names are at most 31 characters; anything longer is nobody's symbol


def _quote(data: Market, symbol: str, max_age_ms: int) -> tuple[Any, Any]:
    """The tick (refused when older than max_age_ms) and the spec, on a worker thread: an MT5
    read waits for the terminal."""
    return data.tick(symbol, max_age_ms=max_age_ms), data.spec(symbol)


def _show(pool: ConnectionPool, cluster: str, fp: str) -> dict | None:
    with pool.connection() as conn:
        return store.show(conn, cluster, fp)


class _DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus what uvicorn lacks. A request head must arrive whole within
    `head_timeout_s` of its first byte (or of the connection, if nothing came yet): uvicorn only
    times out an idle connection after an answer, so a client that sends half a head, or nothing,
    would hold its connection forever. And a connection answered before its body arrived (a
    refusal, a body deadline, a route that reads no body) ends there rather than being kept
    alive: keeping it would mean reading the rest of the body, at whatever pace the client likes."""

    head_timeout_s: float = 5.0  # set per server by _protocol_class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # asyncio's stream servers always give one
            raise TypeError(f"HTTP needs a stream transport, got {type(transport).__name__}")
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a body no one will read
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._await_head()  # part of a head came: its deadline runs from its first byte
        else:
            self._head_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._linger_close()

    def _linger_close(self) -> None:
        """Close after our last answer to a client that may still be sending: half-close, drop
        what arrives for LINGER_S (or until the client closes), then close. Closing at once
        would answer the client's next bytes with a reset, which can destroy the answer before
        the client reads it (RFC 9112, 9.6)."""
        self._lingering = True
        self._head_done()
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():  # a TLS transport cannot half-close: it just lingers
            self.transport.write_eof()  # sent once the answer is flushed
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _await_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _head_done(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # a head begun: say why (a connection that sent nothing is just closed)
            message = f"request head not received within {self.head_timeout_s:g}s".encode()
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
            headers.append((b"content-length", str(len(message)).encode()))
            response = h11.Response(status_code=408, headers=headers, reason=b"Request Timeout")
            for event in (response, h11.Data(data=message), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
            self._linger_close()
        else:
            self.transport.close()


def _protocol_class(head_timeout_s: float) -> type[_DeadlineH11Protocol]:
    """uvicorn builds one protocol per connection from a class: give this server's deadline to a class of its own."""
    return type("DeadlineH11Protocol", (_DeadlineH11Protocol,), {"head_timeout_s": head_timeout_s})


class HttpServer:
    """uvicorn on a socket bound up front, so a taken port fails start-up with one line."""

    def __init__(
        self,
        app: Starlette,
        host: str,
        port: int,
        limits: HttpLimits = DEFAULT_LIMITS,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """`tls`: (certificate chain file, private key file) to serve HTTPS."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only for a
        # socket that says it is TCP; without it every answer waits out a delayed ACK (~40 ms).
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=1,
                http=_protocol_class(limits.header_timeout_ms / 1000),
                h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                # uvicorn answers 503 once connections >= limit, counting the one asking: + 1
                # so that max_connections are served and the next is refused.
                limit_concurrency=limits.max_connections + 1,
                timeout_keep_alive=math.ceil(limits.keepalive_ms / 1000),  # uvicorn counts whole seconds
                ssl_certfile=tls[0] if tls else None,
                ssl_keyfile=tls[1] if tls else None,
            )
        )
        self._thread = threading.Thread(target=self._serve, name="haexec-http", daemon=True)

    def _serve(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        """uvicorn is serving (False again once it stopped, or if it failed to start)."""
        return self._server.started and self._thread.is_alive()

    @property
    def open_connections(self) -> int:
        """Connections uvicorn holds open now (idle, reading or answering)."""
        return len(self._server.server_state.connections)

    @property
    def running_requests(self) -> int:
        """Requests whose handler has not finished."""
        return len(self._server.server_state.tasks)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=3)
        else:  # never served (a start-up that failed after binding): just let the port go
            self._sock.close()
