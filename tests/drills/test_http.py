"""A replica's HTTP surface, on a real process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from db.urls import libpq_url
from embedded import RedisServer
from tests.support import ReplicaProcess, Spawn, cluster_env, run_cli, the_leader, wait_for, wait_ready

METRICS = [
    "haexec_is_leader",
    "haexec_leader_epoch",
    "haexec_leadership_changes_total",
    "haexec_split_brain_total",
    "haexec_db_sync_attempts_total",
    "haexec_db_sync_failures_total",
    "haexec_last_heartbeat_timestamp_seconds",
    "haexec_lease_renew_seconds",
]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def test_routes_of_leader_and_follower_and_health_naming_the_lost_part(
    spawn: Spawn, own_redis: RedisServer, database_url: str, cluster: str
) -> None:
    env = cluster_env(cluster, own_redis.url, database_url)
    replicas = [spawn(env, "r1"), spawn(env, "r2")]
    wait_ready(replicas)
    leader = the_leader(replicas)
    follower = next(r for r in replicas if r is not leader)

    assert follower.get("/leader")[0] == 503
    status, body = leader.get("/leader")
    assert status == 200 and body["leader"] is True and body["epoch"] >= 1

    status, body = follower.get("/coordinator/leader")
    assert status == 200
    assert body["redis_leader"] == body["db_leader"] == leader.instance_id
    assert body["this_instance"] == follower.instance_id
    assert body["is_leader"] is False and body["split_brain"] is False
    assert body["lease_remaining_ms"] == 0
    status, body = leader.get("/coordinator/leader")
    assert body["is_leader"] is True and 0 < body["lease_remaining_ms"] <= 1500

    for r in replicas:
        status, body = r.get("/health")
        assert status == 200 and body["checks"] == {
            "redis": "ok",
            "database": "ok",
            "election_loop": "ok",
            "executor": "ok",
            "broker": "ok",
            "loops": "ok",
            "ready": "ok",
        }
        assert r.get("/ready")[0] == 200

    status, text = leader.get("/metrics")
    assert status == 200
    for name in METRICS:
        assert name in text, name
    assert "haexec_is_leader 1.0" in text
    assert 'haexec_leadership_changes_total{event="acquired"} 1.0' in text
    assert "haexec_is_leader 0.0" in follower.get("/metrics")[1]

    own_redis.stop()

    def unhealthy(r: ReplicaProcess) -> tuple[int, dict] | None:
        answer = r.get("/health")
        return answer if answer[0] == 503 else None

    for r in replicas:
        status, body = wait_for(lambda r=r: unhealthy(r), 10, f"{r.instance_id} answering 503 on /health")
        assert body["checks"]["redis"].startswith("unreachable")
        assert body["checks"]["database"] == "ok"
    wait_for(lambda: not leader.is_leader(), 10, "the leader stepping down without Redis")
    own_redis.start()
    the_leader(replicas, timeout_s=20)


def test_health_names_the_executor_while_the_leader_cannot_work_the_database(
    spawn: Spawn, redis_url: str, database_url: str, cluster: str
) -> None:
    """The coordinator's own database traffic (the leader record) is fine, the executor's is
    not: `signals` is locked, so every sweep fails on its lock timeout. Only /health can say so."""
    leader = spawn(cluster_env(cluster, redis_url, database_url), "r1")
    wait_ready([leader])
    wait_for(leader.is_leader, 15, "r1 leading")
    wait_for(lambda: leader.get("/health")[0] == 200, 10, "a healthy leader")

    with psycopg.connect(libpq_url(database_url)) as blocker:
        blocker.execute("LOCK TABLE signals IN ACCESS EXCLUSIVE MODE")

        def failing() -> dict | None:
            status, body = leader.get("/health")
            return body if status == 503 else None

        body = wait_for(failing, 20, "/health answering 503")
        assert body["checks"]["executor"].startswith("database failing for "), body
        assert "timeout" in body["checks"]["executor"], body  # the error itself, in one line
        assert {k: v for k, v in body["checks"].items() if k != "executor"} == {
            "redis": "ok",
            "database": "ok",
            "election_loop": "ok",
            "broker": "ok",
            "loops": "ok",  # every sweep fails fast on its lock timeout: the executor still beats
            "ready": "ok",
        }
        assert leader.is_leader()  # the election is untouched: only health tells
        blocker.rollback()

    wait_for(lambda: leader.get("/health")[0] == 200, 20, "/health back to 200 once the executor gets through")
    assert "Traceback" not in leader.log()


def test_the_kill_switch_shows_on_every_replica(spawn: Spawn, redis_url: str, database_url: str, cluster: str) -> None:
    """Halted: who, when and why on /health and /coordinator/leader of leader and follower alike,
    and haexec_halted 1 on each; a halt alone never makes a replica unhealthy."""
    env = cluster_env(cluster, redis_url, database_url)
    replicas = [spawn(env, "r1"), spawn(env, "r2")]
    wait_ready(replicas)
    done = run_cli(["halt", "--reason", "news at 14:30"], env)
    assert done.returncode == 0, done.stderr

    def halted(r: ReplicaProcess) -> dict | None:
        status, body = r.get("/health")
        switch = body.get("kill_switch") if status == 200 else None
        return switch if switch and switch["halted"] else None

    for r in replicas:
        switch = wait_for(lambda r=r: halted(r), 10, f"{r.instance_id} showing the halt")
        assert switch["reason"] == "news at 14:30" and switch["actor"].startswith("cli:") and switch["at"]
        assert switch["state"].startswith("trading is halted by cli:")
        assert r.get("/coordinator/leader")[1]["kill_switch"]["halted"] is True
        assert "haexec_halted 1.0" in r.get("/metrics")[1]
    assert run_cli(["resume"], env).returncode == 0
    for r in replicas:
        wait_for(lambda r=r: r.get("/health")[1]["kill_switch"]["halted"] is False, 10, "the resume shown")
        assert "haexec_halted 0.0" in r.get("/metrics")[1]
