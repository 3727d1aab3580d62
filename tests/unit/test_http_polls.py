"""The HTTP polls that wait for a process to serve read a garbled answer as "not serving".

A poll of a port in the ephemeral range that nobody listens on yet can connect the socket to
itself (TCP simultaneous open) and read back its own request line; test_up once failed on
``BadStatusLine: GET /ready HTTP/1.1``. A server that echoes the request stands in for it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bench.cluster import http_status
from haexec.drill.cluster import http_call
from tests.support import http_get


@pytest.fixture
def echo_port() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # close() does not wake a blocked accept(); the loop looks at stop
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                conn.sendall(conn.recv(65536))  # what a self-connected socket reads: its own request

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def test_the_test_poll_reads_an_echoed_request_as_not_serving(echo_port: int) -> None:
    assert http_get(f"http://127.0.0.1:{echo_port}/ready") == (0, None)


def test_the_bench_poll_reads_an_echoed_request_as_not_serving(echo_port: int) -> None:
    assert http_status(f"http://127.0.0.1:{echo_port}/health") == 0


def test_the_drill_poll_reads_an_echoed_request_as_not_serving(echo_port: int) -> None:
    assert http_call(echo_port, "GET", "/ready")[0] == 0
