"""The HTTP polls that wait for a process to serve read a garbled answer as "not serving".

A poll of a port in the ephemeral range that nobody listens on yet can connect the socket to
itself (TCP simultaneous open) and read back its own request line; test_up once failed on
``BadStatusLine: GET /ready HTTP/1.1``. The echo server (tests/unit/conftest.py) stands in for it.
"""

from __future__ import annotations

from bench.cluster import http_status
from haexec.drill.cluster import http_call
from tests.support import http_get


def test_the_test_poll_reads_an_echoed_request_as_not_serving(echo: int) -> None:
    assert http_get(f"http://127.0.0.1:{echo}/ready") == (0, None)


def test_the_bench_poll_reads_an_echoed_request_as_not_serving(echo: int) -> None:
    assert http_status(f"http://127.0.0.1:{echo}/health") == 0


def test_the_drill_poll_reads_an_echoed_request_as_not_serving(echo: int) -> None:
    assert http_call(echo, "GET", "/ready")[0] == 0
