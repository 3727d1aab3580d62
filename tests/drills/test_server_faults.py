"""Faults of the servers themselves, on test-owned Redis and PostgreSQL processes."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from db import migrate
from embedded import PostgresServer, RedisServer
from tests.conftest import server_workdir
from tests.support import (
    LEASE_MS,
    Spawn,
    cluster_env,
    epoch_of,
    history,
    the_leader,
    wait_for,
    wait_ready,
)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    workdir = server_workdir("pg")
    with PostgresServer(workdir) as server:
        yield server
    shutil.rmtree(workdir, ignore_errors=True)


def test_redis_restarted_empty_keeps_the_leader_and_its_epoch(
    spawn: Spawn, own_redis: RedisServer, database_url: str, cluster: str
) -> None:
    env = cluster_env(cluster, own_redis.url, database_url)
    replicas = [spawn(env, f"r{i}") for i in range(1, 4)]
    wait_ready(replicas)
    leader = the_leader(replicas)
    epoch = epoch_of(leader)
    own_redis.restart()  # comes back empty: the leader key is gone
    # The leader whose DB heartbeat is fresh re-asserts its key; nobody else claims.
    wait_for(
        lambda: leader.get("/coordinator/leader")[1].get("redis_leader") == leader.instance_id,
        10,
        "the leader re-asserting its key",
    )
    deadline = time.monotonic() + 2 * LEASE_MS / 1000
    while time.monotonic() < deadline:
        assert the_leader(replicas) is leader
        time.sleep(0.1)
    assert epoch_of(leader) == epoch
    assert [h[2] for h in history(database_url, cluster)] == ["acquired"], "a needless failover happened"


def test_database_stopped_makes_the_leader_release_after_its_grace(
    spawn: Spawn, own_redis: RedisServer, own_postgres: PostgresServer, cluster: str
) -> None:
    database_url = own_postgres.create_database(f"drill_{cluster}")
    migrate.upgrade(database_url)
    env = cluster_env(cluster, own_redis.url, database_url)
    replicas = [spawn(env, f"r{i}") for i in range(1, 4)]
    wait_ready(replicas)
    leader = the_leader(replicas)
    epoch = epoch_of(leader)
    own_postgres.stop()
    stopped = time.monotonic()
    wait_for(lambda: not any(r.is_leader() for r in replicas), 10, "no replica acting as leader")
    released_after = time.monotonic() - stopped
    # db_grace_ms (1000 at lease 1500) plus at most a heartbeat timeout and a renew interval.
    assert released_after < LEASE_MS / 1000 * 3, released_after
    assert "released:db_unreachable" in leader.log()
    own_postgres.start()
    new = the_leader(replicas, timeout_s=30)
    assert epoch_of(new) > epoch
    # The release row that could not be written while the database was down is written now.
    wait_for(
        lambda: (leader.instance_id, epoch, "released:db_unreachable") in history(database_url, cluster),
        10,
        "the released:db_unreachable history row",
    )
