"""The CLI's answers to bad input and to a running cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import psycopg
import pytest

from db.urls import libpq_url
from tests.support import REPO, Spawn, cluster_env, free_port, run_cli, the_leader, wait_for, wait_ready


def run_into_closed_pipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`haexec ARGS | head -1` at its worst: the reader is gone before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "haexec", *args],
            env={**os.environ, **env},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=str(REPO),
        )
    finally:
        os.close(write_end)


def test_version() -> None:
    result = run_cli(["--version"], {})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"haexec {version('haexec')}\n"


@pytest.mark.parametrize("args", [["status"], ["signal", "list"], ["history"], ["history", "--json"]])
def test_a_closed_stdout_ends_quietly_with_141(
    args: list[str], cluster: str, redis_url: str, database_url: str
) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO leadership_history (cluster, instance_id, epoch, event, reason) "
            "VALUES (%s, 'r1', 1, 'acquired', 'acquired')",
            (cluster,),
        )
    result = run_into_closed_pipe(args, cluster_env(cluster, redis_url, database_url))
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


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
    ],
)
def test_bad_configuration_exits_2_with_one_line(env: dict[str, str], names: str) -> None:
    result = run_cli(["run"], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], lines


@pytest.mark.parametrize(
    "args",
    [
        ["signal", "list", "--limit", "-5"],
        ["signal", "list", "--limit", "0"],
        ["signal", "list", "--limit", "99999999999999999999"],
        ["history", "--limit", "-5"],
        ["history", "--limit", "10001"],
        ["switchover", "--timeout", "nan"],
        ["up", "--replicas", "0"],
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    args: list[str], cluster: str, redis_url: str, database_url: str
) -> None:
    result = run_cli(args, cluster_env(cluster, redis_url, database_url))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and args[-2] in lines[0], lines
    assert "Traceback" not in result.stderr


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
