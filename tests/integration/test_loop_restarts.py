"""The restart budget in PostgreSQL: restarts recorded by one supervisor count for the next
one of the same instance (a process restart), not for another instance or another loop, and
only within the window, judged by the database's clock."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from common.clock import FakeClock
from db.session import SessionLimits, make_pool
from db.urls import libpq_url
from engine.loop_restarts import PgRestartLog
from engine.supervision import Supervisor


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    p = make_pool(database_url, SessionLimits(2000, "haexec-test-loops"), name="loops", min_size=1, max_size=2)
    p.open(wait=True, timeout=10)
    yield p
    p.close()


def test_the_restart_count_survives_a_process_restart(pool: ConnectionPool, database_url: str, cluster: str) -> None:
    clock = FakeClock()
    failed: list[str] = []

    def a_process() -> Supervisor:
        log = PgRestartLog(pool, cluster, "r1")
        sup = Supervisor(log, clock=clock, on_failed=lambda loop, why: failed.append(loop))
        sup.register("executor", 1000, lambda: None)
        return sup

    first = a_process()
    for _ in range(3):
        clock.advance(3001)
        first.check()
    assert failed == []
    # Another instance and another loop of this one have budgets of their own.
    assert PgRestartLog(pool, cluster, "r2").recent("executor", 3_600_000) == 0
    assert PgRestartLog(pool, cluster, "r1").recent("feed", 3_600_000) == 0
    second = a_process()  # a new process of the same instance: the hour's 3 restarts are its
    clock.advance(3001)
    second.check()
    assert failed == ["executor"]
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT action, reason FROM loop_restarts WHERE cluster = %s ORDER BY id", (cluster,)
        ).fetchall()
    assert [a for a, _ in rows] == ["restarted"] * 3 + ["failed"]
    assert rows[0][1] == "no heartbeat for 3.0s (period 1s)"


def test_restarts_older_than_the_window_do_not_count(pool: ConnectionPool, database_url: str, cluster: str) -> None:
    log = PgRestartLog(pool, cluster, "r1")
    log.record("feed", "restarted", "died")
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("UPDATE loop_restarts SET at = at - interval '61 minutes' WHERE cluster = %s", (cluster,))
    log.record("feed", "restarted", "died")
    log.record("feed", "failed", "budget spent")
    assert log.recent("feed", 3_600_000) == 1
