"""The replica's HTTP server on a real socket: uvicorn serving build_app's routes in front of
a stand-in replica (no stores needed: every answer here is given before intake or a store)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest

from coordinator.config import ElectionConfig
from coordinator.elector import Role
from haexec import settings
from haexec.http import MAX_BODY_BYTES, HttpServer, build_app
from haexec.settings import HttpLimits
from tests.support import wait_for

TOKEN = "s3cret-token"
DEFAULTS = HttpLimits()


@dataclass
class StubCoordinator:
    cfg: ElectionConfig = field(default_factory=lambda: ElectionConfig.for_lease("http", "r1", 3000))
    epoch: int | None = 7
    role: Role = Role.LEADER
    history_limits: list[int] = field(default_factory=list)

    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def lease_remaining_ms(self) -> float:
        return 1000.0

    def probe(self) -> dict[str, str]:
        return {"redis": "ok", "database": "ok", "election_loop": "ok"}

    def history(self, limit: int) -> list[Any]:
        self.history_limits.append(limit)
        return []


@dataclass
class StubReplica:
    api_token: str | None = TOKEN
    coordinator: StubCoordinator = field(default_factory=StubCoordinator)
    engine_pool: Any = None  # never reached: nothing here gets as far as intake
    ready: bool = True
    switchovers: list[str | None] = field(default_factory=list)
    audited: list[tuple[str, str | None]] = field(default_factory=list)  # (actor, reason) of each switchover

    extra: dict[str, str] = field(default_factory=dict)
    fault: Exception | None = None

    def health_extra(self) -> dict[str, str]:
        if self.fault is not None:
            raise self.fault
        return self.extra

    def loops(self) -> dict[str, dict[str, object]]:
        return {}

    def market_health(self) -> str:
        return "ok"

    def kill_switch(self) -> dict[str, Any] | None:
        return None

    def switchover(self, target: str | None, actor: str, reason: str | None) -> tuple[bool, str]:
        self.switchovers.append(target)
        self.audited.append((actor, reason))
        return True, "switching over"


Serve = Callable[..., HttpServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a real uvicorn on 127.0.0.1:<free port> for `replica`; stopped after the test."""
    started: list[HttpServer] = []

    def start(replica: StubReplica, limits: HttpLimits = DEFAULTS) -> HttpServer:
        server = HttpServer(build_app(replica, limits), "127.0.0.1", 0, limits)
        server.start()
        started.append(server)
        wait_for(lambda: _answers(server.port), 10, "the HTTP server accepting connections")
        return server

    yield start
    for server in started:
        server.stop()


def _answers(port: int) -> bool:
    try:
        return request(port, "GET", "/ready")[0] == 200
    except OSError:
        return False


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode(errors="replace")


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- bearer token ----


def test_a_token_set_with_surrounding_whitespace_matches_the_token(serve: Serve) -> None:
    token = settings.load({"HAEXEC_INSTANCE_ID": "r1", "HAEXEC_API_TOKEN": f"  {TOKEN}\n"}).api_token
    server = serve(StubReplica(api_token=token))
    # Past the token check, the body's fault: 400, not 401.
    assert request(server.port, "POST", "/signals", b"{", auth())[0] == 400
    assert request(server.port, "POST", "/signals", b"{", {"Authorization": f"Bearer   {TOKEN}  "})[0] == 400
    assert request(server.port, "POST", "/signals", b"{", auth(TOKEN + "x"))[0] == 401
    assert request(server.port, "POST", "/signals", b"{", auth(f"{TOKEN[:-1]}"))[0] == 401
    assert request(server.port, "POST", "/signals", b"{")[0] == 401


def test_a_non_ascii_token_matches_when_the_client_sends_it_as_utf8(serve: Serve) -> None:
    server = serve(StubReplica(api_token="pässwörd"))
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with conn:
        conn.sendall(
            b"POST /signals HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nConnection: close\r\n"
            + "Authorization: Bearer pässwörd\r\n".encode()
            + b"\r\n{"
        )
        answer = read_all(conn)
    assert answer.startswith(b"HTTP/1.1 400 "), answer


def read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds it)."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# ---- one validation for every way in ----


def test_a_key_given_twice_is_422_naming_it(serve: Serve) -> None:
    replica = StubReplica()
    server = serve(replica)
    status, body = request(server.port, "POST", "/signals", b'{"source": "s", "volume": "0.1", "volume": "9"}', auth())
    assert status == 422 and "duplicate key 'volume'" in body["errors"]["body"], body
    status, body = request(server.port, "POST", "/coordinator/switchover", b'{"to": "r2", "to": "r3"}', auth())
    assert status == 422 and "duplicate key 'to'" in body["error"], body
    assert replica.switchovers == []


def test_a_bad_manage_block_is_422_naming_each_bad_field(serve: Serve) -> None:
    server = serve(StubReplica())
    body = {"source": "s", "symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.1"}
    body |= {"price": "1.1", "sl": "1", "manage": {"trailing": {"distance_points": 0}, "lock": [[2, 3]]}}
    status, answer = request(server.port, "POST", "/signals", json.dumps(body).encode(), auth())
    assert status == 422, answer
    assert answer["errors"] == {
        "manage.trailing.activation_rr": "required",
        "manage.trailing.distance_points": "must be > 0 (got 0)",
        "manage.lock[0]": "lock 3 R must be below its at 2 R",
    }


def test_an_oversized_switchover_body_is_413_and_switches_nothing(serve: Serve) -> None:
    replica = StubReplica()
    server = serve(replica)
    big = json.dumps({"to": "r2", "pad": "x" * MAX_BODY_BYTES}).encode()
    assert request(server.port, "POST", "/coordinator/switchover", big, auth())[0] == 413
    # Without a declared length (chunked), the limit still holds while streaming.
    assert request(server.port, "POST", "/coordinator/switchover", iter([big]), auth())[0] == 413
    assert replica.switchovers == []
    status, body = request(server.port, "POST", "/coordinator/switchover", b'{"to": "r2"}', auth())
    assert status == 202 and replica.switchovers == ["r2"], body


def test_a_switchover_is_audited_as_the_client_address_with_what_it_claims_and_why(serve: Serve) -> None:
    replica = StubReplica()
    server = serve(replica)
    assert request(server.port, "POST", "/coordinator/switchover", b"", auth())[0] == 202
    claimed = b'{"to": "r2", "reason": "patching r1", "actor": "cli:ops"}'
    assert request(server.port, "POST", "/coordinator/switchover", claimed, auth())[0] == 202
    assert replica.audited == [("http:127.0.0.1", None), ("cli:ops via http:127.0.0.1", "patching r1")]
    status, body = request(server.port, "POST", "/coordinator/switchover", b'{"reason": 5}', auth())
    assert status == 400 and "reason" in body["error"] and len(replica.audited) == 2


@pytest.mark.parametrize("limit", ["１０", "١٠", "²", "+5", " 5", "0", "1001", "5.0", ""])
def test_history_limit_is_ascii_digits_from_1_to_1000(serve: Serve, limit: str) -> None:
    replica = StubReplica()
    server = serve(replica)
    status, body = request(server.port, "GET", f"/coordinator/history?limit={quote(limit)}")
    assert status == 400 and body == {"error": "limit must be an integer from 1 to 1000"}
    assert replica.coordinator.history_limits == []
    assert request(server.port, "GET", "/coordinator/history?limit=1000")[0] == 200
    assert replica.coordinator.history_limits == [1000]


# ---- clients that go away ----


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def uvicorn_log() -> Iterator[Callable[[], list[logging.LogRecord]]]:
    """uvicorn's own records, which its logging config keeps from reaching caplog. Call it after
    the server started: start-up replaces the handlers of uvicorn's loggers."""
    logger = logging.getLogger("uvicorn.error")
    keep = Keep()

    def watch() -> list[logging.LogRecord]:
        logger.addHandler(keep)
        return keep.records

    yield watch
    logger.removeHandler(keep)


@pytest.mark.parametrize("path", ["/signals", "/coordinator/switchover"])
def test_a_client_leaving_mid_body_is_no_traceback_and_does_nothing(
    serve: Serve, caplog: pytest.LogCaptureFixture, uvicorn_log: Callable[[], list[logging.LogRecord]], path: str
) -> None:
    replica = StubReplica()
    server = serve(replica)
    uvicorn_records = uvicorn_log()
    caplog.set_level(logging.DEBUG)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"to": "r2", "so'
        )
        wait_for(lambda: server.running_requests == 1, 10, "the handler reading the body")
    wait_for(lambda: server.running_requests == 0 and server.open_connections == 0, 10, "the handler finishing")
    logged = [*caplog.records, *uvicorn_records]
    assert not [r for r in logged if r.exc_info or r.levelno >= logging.ERROR], [r.getMessage() for r in logged]
    assert replica.switchovers == []


# ---- slow and abusive clients ----

FAST = HttpLimits(max_connections=20, header_timeout_ms=300, body_timeout_ms=300, keepalive_ms=300)
CUT_OFF_S = 10.0  # generous: the server's deadlines above are 0.3 s; this only bounds a hang


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CUT_OFF_S)


def one_response(conn: socket.socket) -> http.client.HTTPResponse:
    """Read exactly one response off a raw connection, leaving the connection open."""
    resp = http.client.HTTPResponse(conn)
    resp.begin()
    resp.read()
    return resp


def closed_by_server(conn: socket.socket) -> bool:
    """True once the server closes (EOF or reset) within CUT_OFF_S; False if it still sends data."""
    try:
        return conn.recv(65536) == b""
    except ConnectionResetError:
        return True


def trickle(conn: socket.socket, data: bytes, interval_s: float) -> threading.Thread:
    """Send `data` a byte at a time until done or the server hangs up."""

    def send() -> None:
        for i in range(len(data)):
            try:
                conn.send(data[i : i + 1])
            except OSError:
                return
            time.sleep(interval_s)  # the client's pace; nothing waits on it

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_half_sent_head_gets_408_and_the_connection_closed(serve: Serve) -> None:
    server = serve(StubReplica(), FAST)
    with connect(server.port) as conn:
        conn.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\n")
        answer = read_all(conn)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"connection: close" in answer.lower()


def test_a_head_sent_a_byte_at_a_time_is_cut_off_at_its_deadline(serve: Serve) -> None:
    """Slowloris: each byte arrives in time, the head never ends. The deadline runs from the
    first byte, so steady trickling does not extend it."""
    server = serve(StubReplica(), FAST)
    with connect(server.port) as conn:
        sender = trickle(conn, b"GET /ready HTTP/1.1\r\n" + b"X-Slow: 1\r\n" * 1000, 0.02)
        answer = read_all(conn)
    sender.join(CUT_OFF_S)
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_a_connection_that_sends_nothing_is_closed(serve: Serve) -> None:
    server = serve(StubReplica(), FAST)
    with connect(server.port) as conn:
        assert read_all(conn) == b""  # closed without an answer to a request never begun
    wait_for(lambda: server.open_connections == 0, CUT_OFF_S, "the server forgetting the connection")


def test_many_half_sent_requests_fill_the_limit_then_are_all_closed(serve: Serve) -> None:
    server = serve(StubReplica(), FAST)
    held = [connect(server.port) for _ in range(60)]
    try:
        for conn in held:
            conn.sendall(b"POST /signals HTTP/1.1\r\nHost: t\r\nContent-Le")
        wait_for(lambda: server.open_connections >= 60, CUT_OFF_S, "60 connections open")
        # Beyond max_connections a complete request is refused at once, not queued.
        with connect(server.port) as extra:
            extra.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
            assert one_response(extra).status == 503
        for conn in held:
            assert read_all(conn).startswith(b"HTTP/1.1 408 ")  # then closed: read_all saw EOF
        wait_for(lambda: server.open_connections == 0, CUT_OFF_S, "every half-sent request closed")
    finally:
        for conn in held:
            conn.close()
    assert request(server.port, "GET", "/ready")[0] == 200


def test_connections_beyond_the_limit_get_503_until_one_is_freed(serve: Serve) -> None:
    limits = HttpLimits(max_connections=2, keepalive_ms=60_000)
    server = serve(StubReplica(), limits)
    held = [connect(server.port) for _ in range(2)]
    try:
        for conn in held:  # two served, kept alive
            conn.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
            assert one_response(conn).status == 200
        assert request(server.port, "GET", "/ready")[0] == 503
        held.pop().close()
        wait_for(lambda: request(server.port, "GET", "/ready")[0] == 200, CUT_OFF_S, "a freed connection served")
    finally:
        for conn in held:
            conn.close()


@pytest.mark.parametrize("path", ["/signals", "/coordinator/switchover"])
def test_a_body_sent_a_byte_a_while_gets_408_and_the_connection_closed(serve: Serve, path: str) -> None:
    replica = StubReplica()
    server = serve(replica, FAST)
    body = b'{"to": "r2"}' + b" " * 88
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    with connect(server.port) as conn:
        conn.sendall(head.encode())
        sender = trickle(conn, body, 0.05)  # 5 s for the whole body at this pace
        answer = read_all(conn)  # returns only once the server closes
    sender.join(CUT_OFF_S)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"body not received within 0.3s" in answer
    assert replica.switchovers == []


def test_an_answer_before_the_body_arrived_closes_the_connection(serve: Serve) -> None:
    """A route that reads no body answers at once; the rest of the body is never read, so the
    connection is not kept alive for a client to trickle it in."""
    server = serve(StubReplica(), HttpLimits(keepalive_ms=60_000))
    with connect(server.port) as conn:
        conn.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789")
        assert one_response(conn).status == 200
        assert closed_by_server(conn)


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_time(serve: Serve) -> None:
    server = serve(StubReplica(), FAST)
    with connect(server.port) as conn:
        conn.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n")
        assert one_response(conn).status == 200
        conn.settimeout(3.0)  # uvicorn's own default is 5 s; this server's is 0.3 s
        assert closed_by_server(conn)


def test_a_half_sent_head_over_8_KiB_is_refused_at_once(serve: Serve) -> None:
    """What a half-sent head may hold in memory until its deadline: 8 KiB, then 400 (h11's
    bound on an incomplete event; a complete head arriving in one read is parsed whole)."""
    server = serve(StubReplica(), HttpLimits(header_timeout_ms=60_000))
    with connect(server.port) as conn:
        conn.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"x" * 9000)
        assert read_all(conn).startswith(b"HTTP/1.1 400 ")
    with connect(server.port) as conn:
        conn.sendall(b"GET /ready HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"x" * 7000)
        conn.sendall(b"\r\n\r\n")  # within the bound: the rest completes it
        assert one_response(conn).status == 200


# ---- /health status codes ----


def test_health_is_200_when_everything_is_fine(serve: Serve) -> None:
    status, body = request(serve(StubReplica()).port, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["checks"]["ready"] == "ok"


def test_health_is_503_while_not_ready(serve: Serve) -> None:
    replica = StubReplica()
    server = serve(replica)  # served once ready; then stopping (ready no longer)
    replica.ready = False
    status, body = request(server.port, "GET", "/health")
    assert status == 503 and body["status"] == "degraded" and body["checks"]["ready"] == "not ready"


def test_health_is_503_naming_a_failed_loop(serve: Serve) -> None:
    replica = StubReplica(extra={"loops": "failed: executor (its thread died)"})
    status, body = request(serve(replica).port, "GET", "/health")
    assert status == 503 and body["checks"]["loops"] == "failed: executor (its thread died)"


def test_health_is_503_when_a_dependency_is_down(serve: Serve) -> None:
    class Down(StubCoordinator):
        def probe(self) -> dict[str, str]:
            return {"redis": "ok", "database": "unreachable: connection refused", "election_loop": "ok"}

    status, body = request(serve(StubReplica(coordinator=Down())).port, "GET", "/health")
    assert status == 503 and body["checks"]["database"] == "unreachable: connection refused"


def test_health_fault_is_500_with_an_error_id_logged_and_no_traceback(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    replica = StubReplica(fault=RuntimeError("bug: secret-internal-detail"))
    with caplog.at_level(logging.ERROR, logger="haexec.http"):
        status, body = request(serve(replica).port, "GET", "/health")
    assert status == 500 and set(body) == {"error", "error_id"}
    assert "secret-internal-detail" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, under the id
    assert request(serve(StubReplica()).port, "GET", "/health")[0] == 200  # the server lives on
