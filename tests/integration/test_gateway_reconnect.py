"""The gateway's terminal reconnect, against a real gateway process with the fake MetaTrader5
module dropping its connection: the IPC link gone (every call "No IPC connection") and the
trade server lost (terminal_info().connected false). Meanwhile /health and the metric say so
and a send is refused 503 "terminal disconnected" with nothing sent; then it is back."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gateway_support import GatewayProcess, grant, send_body, start_gateway, tag
from tests.support import wait_for


@pytest.fixture(scope="module")
def cluster_name() -> str:
    return f"gwr-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, database_url: str, cluster_name: str) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("gwreconnect"), database_url, cluster_name)
    wait_for(lambda: process.health()[0] == 200, 10, "a healthy gateway")
    grant(database_url, cluster_name, 1, "r1")
    yield process
    process.control.path.unlink(missing_ok=True)
    process.kill(signal.SIGKILL)


def terminal_check(gw: GatewayProcess) -> str:
    status, body = gw.health()
    return str(body["checks"]["terminal"]) if body else f"HTTP {status}"


def refused_while_down(gw: GatewayProcess, cluster: str, n: int) -> dict[str, Any]:
    """Wait for the gateway to see the link down; a send then: refused, nothing sent."""
    wait_for(lambda: terminal_check(gw).startswith("disconnected"), 5, "/health to say disconnected")
    assert gw.health()[0] == 503
    assert gw.metric("haexec_gateway_terminal_connected") == 0.0
    sends = gw.control.order_sends()
    r = gw.post("/v1/send", send_body(cluster, 1, "r1", tag(n)))
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "terminal disconnected"
    assert gw.control.order_sends() == sends
    return r.json()


def back_and_sending(gw: GatewayProcess, cluster: str, n: int) -> None:
    wait_for(lambda: gw.health()[0] == 200, 10, "the terminal to be back")
    assert gw.metric("haexec_gateway_terminal_connected") == 1.0
    sends = gw.control.order_sends()
    r = gw.post("/v1/send", send_body(cluster, 1, "r1", tag(n)))
    assert r.status_code == 200, r.text
    assert gw.control.order_sends() == sends + 1


def test_a_lost_ipc_link_is_initialized_and_logged_in_again_with_backoff(gw: GatewayProcess, cluster_name: str) -> None:
    assert gw.post("/v1/send", send_body(cluster_name, 1, "r1", tag(1))).status_code == 200
    before = gw.control.state()["calls"]["initialize"]
    gw.control("set", field="init_failures", value=3)  # the terminal takes a while to come back
    gw.control("set", field="initialized", value=False)  # every call: -10004 No IPC connection
    refused_while_down(gw, cluster_name, 2)
    assert gw.metric("haexec_gateway_refusals_total", reason="terminal_disconnected") >= 1
    back_and_sending(gw, cluster_name, 2)
    state = gw.control.state()
    assert state["calls"]["initialize"] == before + 4  # three refused, the fourth logged in
    assert state["threads"]["initialize"] == ["mt5-terminal-770077"]  # the one worker: never beside a call
    log = gw.log()
    assert "MT5 terminal connection lost" in log and "MT5 reconnect attempt 3 failed" in log
    assert "reconnected after" in log and "s3cret" not in log


def test_a_terminal_without_its_trade_server_is_refused_until_it_is_back(gw: GatewayProcess, cluster_name: str) -> None:
    gw.control("set", field="connected", value=False)
    answer = refused_while_down(gw, cluster_name, 3)
    assert "not connected" in answer["detail"]
    gw.control("set", field="connected", value=True)
    back_and_sending(gw, cluster_name, 3)
