"""The replica's HTTP server on a real socket: uvicorn serving build_app's routes in front of
a stand-in replica (no stores needed: every answer here is given before intake or a store)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest

from coordinator.config import ElectionConfig
from coordinator.elector import Role
from haexec import settings
from haexec.http import MAX_BODY_BYTES, HttpServer, build_app
from tests.support import wait_for

TOKEN = "s3cret-token"


@dataclass
class StubElector:
    epoch: int | None = 7
    role: Role = Role.LEADER

    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def lease_remaining_ms(self) -> float:
        return 1000.0


@dataclass
class StubCoordinator:
    cfg: ElectionConfig = field(default_factory=lambda: ElectionConfig.for_lease("http", "r1", 3000))
    elector: StubElector = field(default_factory=StubElector)
    history_limits: list[int] = field(default_factory=list)

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

    def health_extra(self) -> dict[str, str]:
        return {}

    def switchover(self, target: str | None) -> tuple[bool, str]:
        self.switchovers.append(target)
        return True, "switching over"


Serve = Callable[..., HttpServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a real uvicorn on 127.0.0.1:<free port> for `replica`; stopped after the test."""
    started: list[HttpServer] = []

    def start(replica: StubReplica, **kwargs: Any) -> HttpServer:
        server = HttpServer(build_app(replica), "127.0.0.1", 0, **kwargs)
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
