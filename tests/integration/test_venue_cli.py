"""`haexec venue` as a process: it matches and marks the cluster's paper account from the
sim feed and publishes its ticks, a second one stands by, SIGTERM hands over and exits 0;
bad configuration is exit 2 and an unreachable store exit 1, each one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from coordinator.lease import redis_client
from db.urls import libpq_url
from engine.venue.streams import ticks_key
from tests.support import REPO, run_cli, wait_for


def env_of(cluster: str, redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAEXEC_")}
    env.update(
        {
            "HAEXEC_CLUSTER": cluster,
            "HAEXEC_REDIS_URL": redis_url,
            "HAEXEC_DATABASE_URL": database_url,
            "HAEXEC_MARKET_SYMBOLS": "EURUSD,USDJPY",
            "HAEXEC_STARTUP_TIMEOUT_S": "5",
            **extra,
        }
    )
    return env


def start(env: dict[str, str], name: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "haexec.cli", "venue", "--instance-id", name],
            env=env,
            cwd=str(REPO),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def marked_by(database_url: str, cluster: str) -> str | None:
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            "SELECT venue FROM paper_marks WHERE cluster = %s AND marked_at > clock_timestamp() - interval '1 s'",
            (cluster,),
        ).fetchone()
    return row[0] if row else None


def test_the_venue_marks_publishes_hands_over_and_stops_on_sigterm(
    redis_url: str, database_url: str, cluster: str, tmp_path: Path
) -> None:
    env = env_of(cluster, redis_url, database_url)
    first = start(env, "venue-a", tmp_path / "a.log")
    second = start(env, "venue-b", tmp_path / "b.log")
    client = redis_client(redis_url, 2.0)
    try:
        holder = wait_for(lambda: marked_by(database_url, cluster), 30, "a venue marking the account")
        stopped, standby = (first, second) if holder == "venue-a" else (second, first)
        wait_for(lambda: client.xlen(ticks_key(cluster, "USDJPY")) >= 2, 10, "ticks on the stream")
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(15) == 0
        other = "venue-b" if holder == "venue-a" else "venue-a"
        wait_for(lambda: marked_by(database_url, cluster) == other, 15, "the standby taking over")
        log = (tmp_path / ("b.log" if holder == "venue-a" else "a.log")).read_text()
        assert "standing by" in log and "matches cluster" in log
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(15)
        for symbol in ("EURUSD", "USDJPY"):
            client.delete(ticks_key(cluster, symbol), f"haexec:{cluster}:bars:{symbol}")
        client.close()
    assert standby.returncode == 0


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            {"HAEXEC_VENUE_LEVERAGE": "0"},
            "haexec venue: configuration: HAEXEC_VENUE_LEVERAGE: must be 1..10000 (got 0)",
        ),
        ({"HAEXEC_VENUE_TRADE_MODES": "EURUSD"}, "haexec venue: configuration: HAEXEC_VENUE_TRADE_MODES: 'EURUSD'"),
        ({"HAEXEC_MARKET_SYMBOLS": "EURUSD,NOPE"}, "haexec venue: configuration: HAEXEC_MARKET_SYMBOLS: the sim"),
    ],
)
def test_bad_configuration_is_exit_2_in_one_line(
    redis_url: str, database_url: str, cluster: str, extra: dict[str, str], says: str
) -> None:
    done = run_cli(["venue"], env_of(cluster, redis_url, database_url, **extra))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(says), done.stderr


def test_an_unreachable_store_is_exit_1_in_one_line(redis_url: str, database_url: str, cluster: str) -> None:
    env = env_of(cluster, "redis://127.0.0.1:1", database_url, HAEXEC_STARTUP_TIMEOUT_S="1")
    done = run_cli(["venue"], env)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("haexec venue: redis at redis://127.0.0.1:1 unreachable after 1s: "), line
    env = env_of(cluster, redis_url, "postgresql://u:secret@127.0.0.1:1/db", HAEXEC_STARTUP_TIMEOUT_S="1")
    done = run_cli(["venue"], env)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "database at postgresql://u:***@127.0.0.1:1/db unreachable" in done.stderr and "secret" not in done.stderr
