"""Plans across a paused and a killed leader, on real replica processes: every plan that
fires executes once, whoever leads, and a plan cancelled before it fired never executes."""

from __future__ import annotations

import json
import signal
import urllib.request

import psycopg

from db.urls import libpq_url
from tests.support import ReplicaProcess, Spawn, cluster_env, the_leader, wait_for, wait_ready

ORDER = {"symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.01", "price": "1.1", "sl": "1.09"}


def call(r: ReplicaProcess, method: str, path: str, body: object | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(r.base + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def test_each_plan_fires_once_across_a_pause_and_a_kill(
    spawn: Spawn, redis_url: str, database_url: str, cluster: str
) -> None:
    env = {**cluster_env(cluster, redis_url, database_url), "HAEXEC_PAPER_PRICES": "signal"}
    replicas = [spawn(env, "r1"), spawn(env, "r2")]
    wait_ready(replicas)
    first = the_leader(replicas)
    other = next(r for r in replicas if r is not first)
    # The leader pauses; plans arrive at the follower, which takes over and fires them.
    first.signal(signal.SIGSTOP)
    for i in range(4):
        assert call(other, "POST", "/plans", {**ORDER, "plan_id": f"pause{i}"}) == 201
    assert (
        call(
            other,
            "POST",
            "/plans",
            {**ORDER, "plan_id": "never", "conditions": {"type": "price_above", "symbol": "EURUSD", "level": "9"}},
        )
        == 201
    )
    assert call(other, "DELETE", "/plans/never") == 200
    wait_for(lambda: other.is_leader(), 15, "the follower leads")
    first.signal(signal.SIGCONT)  # wakes deposed: its fence refuses whatever it had in hand
    # Plans arrive at the woken replica; the leader is killed while they may be firing.
    for i in range(4):
        assert call(first, "POST", "/plans", {**ORDER, "plan_id": f"kill{i}"}) == 201
    other.signal(signal.SIGKILL)
    wait_for(lambda: first.is_leader(), 15, "the first replica leads again")

    def settled() -> list[tuple[str, str, int]] | None:
        with psycopg.connect(libpq_url(database_url)) as conn:
            rows = conn.execute(
                "SELECT p.plan_id, p.status, count(s.id) FROM trade_plans p"
                " LEFT JOIN signals s ON s.cluster = p.cluster AND s.source = 'plan'"
                " AND split_part(s.signal_id, ':', 1) = p.plan_id WHERE p.cluster = %s"
                " GROUP BY p.plan_id, p.status ORDER BY p.plan_id",
                (cluster,),
            ).fetchall()
        done = all(status in ("executed", "cancelled") for _, status, _ in rows)
        return [(str(a), str(b), int(c)) for a, b, c in rows] if done and len(rows) == 9 else None

    rows = wait_for(settled, 20, "every plan settled")
    assert ("never", "cancelled", 0) in rows
    assert [n for pid, status, n in rows if pid != "never"] == [1] * 8, rows
    with psycopg.connect(libpq_url(database_url)) as conn:
        orders = conn.execute(
            "SELECT count(*), count(DISTINCT tag) FROM paper_orders WHERE cluster = %s", (cluster,)
        ).fetchone()
    assert orders == (8, 8)
