"""The CLI's answers to bad input and to a running cluster."""

from __future__ import annotations

import json

import psycopg
import pytest

from db.urls import libpq_url
from tests.support import Spawn, cluster_env, free_port, run_cli, the_leader, wait_for, wait_ready


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"HAEXEC_LEASE_MS": "abc"}, "HAEXEC_LEASE_MS"),
        ({"HAEXEC_LEASE_MS": "3000", "HAEXEC_RENEW_DEADLINE_MS": "3000"}, "HAEXEC_LEASE_MS"),
        ({"HAEXEC_RENEW_MS": "1900"}, "HAEXEC_RENEW_DEADLINE_MS"),
        ({"HAEXEC_STALE_AFTER_MS": "100"}, "HAEXEC_STALE_AFTER_MS"),
        ({"HAEXEC_REDIS_URL": "http://x", "HAEXEC_DATABASE_URL": "postgresql://x/y"}, "HAEXEC_REDIS_URL"),
        ({"HAEXEC_HTTP": "0.0.0.0:8000"}, "HAEXEC_API_TOKEN"),
        ({"HAEXEC_HTTP": "nonsense"}, "HAEXEC_HTTP"),
        ({"HAEXEC_BROKER": "ftx"}, "HAEXEC_BROKER"),
        ({"HAEXEC_CLUSTER": "a:b"}, "HAEXEC_CLUSTER"),
        ({"HAEXEC_ALERT_WEBHOOK": "ftp://alerts.example"}, "HAEXEC_ALERT_WEBHOOK"),
        ({"HAEXEC_IN_DOUBT": "maybe"}, "HAEXEC_IN_DOUBT"),
        ({"HAEXEC_BROKER_DEADLINE_MS": "5000"}, "HAEXEC_BROKER_DEADLINE_MS"),
        ({"HAEXEC_RISK_MAX_RISK_PCT": "200"}, "HAEXEC_RISK_MAX_RISK_PCT"),
        ({"HAEXEC_API_TOKEN": "  "}, "HAEXEC_API_TOKEN"),
        ({"HAEXEC_HTTP_MAX_CONNECTIONS": "0"}, "HAEXEC_HTTP_MAX_CONNECTIONS"),
        ({"HAEXEC_HTTP_BODY_TIMEOUT_MS": "ten"}, "HAEXEC_HTTP_BODY_TIMEOUT_MS"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(env: dict[str, str], names: str) -> None:
    result = run_cli(["run"], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], lines


def test_unreachable_redis_at_start_exits_1_after_bounded_retries(database_url: str) -> None:
    result = run_cli(
        ["run", "--http", "127.0.0.1:0"],
        {
            "HAEXEC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "HAEXEC_DATABASE_URL": database_url,
            "HAEXEC_STARTUP_TIMEOUT_S": "1",
        },
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "redis" in lines[0] and "unreachable after 1s" in lines[0], lines


def test_unreachable_database_at_start_exits_1(redis_url: str) -> None:
    result = run_cli(
        ["run", "--http", "127.0.0.1:0"],
        {
            "HAEXEC_REDIS_URL": redis_url,
            "HAEXEC_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
            "HAEXEC_STARTUP_TIMEOUT_S": "1",
        },
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "database" in lines[0] and "unreachable" in lines[0], lines


def test_port_in_use_exits_1(spawn: Spawn, cluster: str, redis_url: str, database_url: str) -> None:
    env = cluster_env(cluster, redis_url, database_url)
    first = spawn(env, "r1")
    wait_ready([first])
    result = run_cli(["run", "--instance-id", "r2", "--http", f"127.0.0.1:{first.port}"], env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"haexec run: cannot listen on 127.0.0.1:{first.port}: Address already in use"
    ]


def test_status_and_leader_read_the_stores_directly(
    spawn: Spawn, cluster: str, redis_url: str, database_url: str
) -> None:
    env = cluster_env(cluster, redis_url, database_url)
    replicas = [spawn(env, f"r{i}") for i in range(1, 4)]
    wait_ready(replicas)
    leader = the_leader(replicas)

    def status() -> dict:
        result = run_cli(["status", "--json"], env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def all_registered() -> dict | None:
        s = status()
        return s if len(s["replicas"]) == 3 and s["leader"] else None

    body = wait_for(all_registered, 10, "3 registered replicas")
    assert body["cluster"] == cluster
    assert body["leader"]["instance_id"] == leader.instance_id
    assert body["redis_leader"] == body["db_leader"] == leader.instance_id
    assert body["epoch"] == body["leader"]["epoch"] >= 1
    assert body["split_brain"] is False
    roles = {r["instance_id"]: r["role"] for r in body["replicas"]}
    assert roles == {r.instance_id: ("leader" if r is leader else "follower") for r in replicas}
    assert {"pid", "host", "http", "healthy"} <= set(body["replicas"][0])

    result = run_cli(["leader", "--json"], env)
    assert result.returncode == 0
    answer = json.loads(result.stdout)
    assert answer["leader"]["instance_id"] == leader.instance_id
    assert answer["http"] == f"127.0.0.1:{leader.port}"

    for r in replicas:
        r.proc.terminate()
        r.proc.wait(10)
    # With no replica up the stores still answer: no leader, the record released.
    body = status()
    assert body["leader"] is None and body["replicas"] == []
    assert run_cli(["leader", "--json"], env).returncode == 1


def test_signal_submit_refuses_what_post_signals_refuses(cluster: str, redis_url: str, database_url: str) -> None:
    """One limit and one decoder for every way in: over 64 KiB, or a key given twice, is
    refused with one line and nothing stored (argument and stdin alike)."""
    env = cluster_env(cluster, redis_url, database_url)
    good = {"source": "cli", "symbol": "EURUSD", "side": "buy", "type": "market", "volume": "0.1"}
    good |= {"price": "1.1", "sl": "1"}
    big = json.dumps({**good, "meta": {"pad": "x" * 70_000}})
    twice = json.dumps(good)[:-1] + ', "volume": "50"}'

    for args, stdin, says in (
        ([big], None, "larger than 65536 bytes"),
        (["-"], big, "larger than 65536 bytes"),
        ([twice], None, "duplicate key 'volume'"),
        (["-"], twice, "duplicate key 'volume'"),
    ):
        result = run_cli(["signal", "submit", *args], env, stdin=stdin)
        assert result.returncode == 1, (args[0][:20], result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], lines

    with psycopg.connect(libpq_url(database_url)) as conn:
        stored = conn.execute("SELECT count(*) FROM signals WHERE cluster = %s", (cluster,)).fetchone()
    assert stored == (0,)
    accepted = run_cli(["signal", "submit", "--json", json.dumps(good)], env)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["duplicate"] is False
