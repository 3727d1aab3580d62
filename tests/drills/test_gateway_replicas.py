"""Two real replicas trading through a real gateway process (HAEXEC_BROKER=gateway), their
market data through it too (HAEXEC_MARKET=gateway): signals executed once each at the
terminal, across a SIGKILL of the leader; the gateway's promise follows the database's epoch
to the new leader; a follower serves the terminal's quote."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_support import TOKEN, GatewayProcess, start_gateway
from tests.support import ReplicaProcess, Spawn, cluster_env, epoch_of, the_leader, wait_for, wait_ready


@pytest.fixture
def gateway(tmp_path: Path, database_url: str, cluster: str) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path, database_url, cluster, HAEXEC_GATEWAY_DEADLINE_MS="300")
    yield gw
    gw.kill()
    gw.control.path.unlink(missing_ok=True)


def post_signal(r: ReplicaProcess, i: int) -> str:
    body = {
        "source": "gw-drill",
        "signal_id": f"s{i}",
        "symbol": "EURUSD",
        "side": "buy",
        "type": "market",
        "volume": "0.10",
        "price": "1.1001",
        "sl": "1.0950",
    }
    req = urllib.request.Request(
        r.base + "/signals", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 202
        return str(json.loads(resp.read())["fingerprint"])


def status(r: ReplicaProcess, fp: str) -> Any:
    code, body = r.get(f"/signals/{fp}")
    return body.get("status") if code == 200 else None


@pytest.mark.drill
def test_replicas_trade_through_the_gateway_across_a_leader_kill(
    spawn: Spawn, gateway: GatewayProcess, cluster: str, redis_url: str, database_url: str
) -> None:
    env = {
        **cluster_env(cluster, redis_url, database_url),
        "HAEXEC_BROKER": "gateway",
        "HAEXEC_GATEWAY_URL": gateway.base,
        "HAEXEC_GATEWAY_TOKEN": TOKEN,
        "HAEXEC_BROKER_DEADLINE_MS": "600",
        "HAEXEC_MARKET": "gateway",
        "HAEXEC_MARKET_SYMBOLS": "EURUSD",
    }
    replicas = [spawn(env, "gwa"), spawn(env, "gwb")]
    wait_ready(replicas)
    leader = the_leader(replicas)
    first = post_signal(leader, 1)
    wait_for(lambda: status(leader, first) == "executed", 15, "the first signal executed")
    epoch = epoch_of(leader)
    assert gateway.health()[1]["promise"] == {"epoch": epoch, "instance": leader.instance_id}

    follower = next(r for r in replicas if r is not leader)
    code, quote = follower.get("/market/EURUSD")
    assert code == 200 and quote["source"] == "gateway", quote
    assert (quote["tick"]["bid"], quote["tick"]["ask"], quote["spec"]["digits"]) == ("1.10000", "1.10010", 5)

    leader.signal(signal.SIGKILL)
    leader.proc.wait(timeout=10)
    survivor = next(r for r in replicas if r is not leader)
    the_leader([survivor], timeout_s=15)
    second = post_signal(survivor, 2)
    wait_for(lambda: status(survivor, second) == "executed", 15, "the second signal executed by the new leader")
    new_epoch = epoch_of(survivor)
    assert new_epoch > epoch
    assert gateway.health()[1]["promise"] == {"epoch": new_epoch, "instance": survivor.instance_id}

    comments = [r["comment"] for r in gateway.control.state()["requests"]]
    assert len(comments) == 2 and len(set(comments)) == 2  # one order per signal, nothing twice
    positions = gateway.control.state()["positions"]
    assert sorted(p["comment"] for p in positions) == sorted(comments)
